"""GPTQ Hessians: H = 2/N · Σ XᵀX over the real (non-padding) input tokens of a layer.

Scaling: this is 2 x the mean over tokens of x xᵀ. The GPTQ reference averages over *sequences*
(H = 2/S · Σ XᵀX with S sequences, padding included), i.e. our H times the mean tokens per
sequence. The GPTQ solution is invariant to that scalar (damping is a fraction of the mean diagonal),
so the two differ only where the reference counts padding tokens, which we never do.
"""
from __future__ import annotations

import torch

from engine.stats.accumulators import TokenIndex

DTYPES = {"float32": torch.float32, "float64": torch.float64}  # by Precision label


class HessianAccumulator:
    """Unnormalized Σ XᵀX and the count of real tokens; normalized only on read.

    ``storage`` may differ from the data's device (e.g. Hessians on the CPU while the model runs
    on a GPU): each batch is moved there before the product.
    """

    def __init__(self, channels: int, dtype: torch.dtype = torch.float32, storage: torch.device | str = "cpu") -> None:
        self.channels = channels
        self.dtype = dtype
        self.xtx = torch.zeros(channels, channels, dtype=dtype, device=storage)
        self.tokens = 0

    def update(self, x: torch.Tensor, tokens: TokenIndex | None = None) -> None:
        if x.shape[0] == 0:
            return
        x = x.to(device=self.xtx.device, dtype=self.dtype)
        self.xtx.addmm_(x.T, x)  # Σ_t x_t x_tᵀ, one GEMM per batch
        self.tokens += x.shape[0]

    def merge(self, other: HessianAccumulator) -> HessianAccumulator:
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {other.channels} channels into {self.channels}")
        self.xtx += other.xtx.to(self.xtx)
        self.tokens += other.tokens
        return self

    def result(self) -> torch.Tensor:
        """H = 2/N · Σ XᵀX (zeros before any token)."""
        return self.xtx * (2.0 / self.tokens) if self.tokens else torch.zeros_like(self.xtx)
