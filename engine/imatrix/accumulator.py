"""Σx² per input channel and the token count: what llama-imatrix keeps for every weight.

The diagonal of the GPTQ Hessian is the same sum up to its scale (H_jj = 2/N · Σ x_j²), so this
is the Hessian's diagonal at the cost of a reduction instead of a GEMM, and ``channels`` floats of
state instead of ``channels²``.
"""
from __future__ import annotations

import torch

from engine.hooks import TokenIndex
from engine.stats import all_reduce_count


class SquareSumAccumulator:
    """Per batch the squares are summed in float32 on the data's device (llama.cpp sums in float32
    too); the running sum is float64, so a long pass does not lose the small batches' digits."""

    def __init__(self, channels: int, device: torch.device | str = "cpu") -> None:
        self.channels = channels
        self.sums = torch.zeros(channels, dtype=torch.float64, device=device)
        self.tokens = 0

    def update(self, x: torch.Tensor, tokens: TokenIndex | None = None) -> None:
        if x.shape[0] == 0:
            return
        self.tokens += x.shape[0]  # a host count: the batch's shape, no device sync
        self.sums += x.to(torch.float32).square().sum(0).to(self.sums)

    def merge(self, other: SquareSumAccumulator) -> SquareSumAccumulator:
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {other.channels} channels into {self.channels}")
        self.sums += other.sums.to(self.sums)
        self.tokens += other.tokens
        return self

    def all_reduce(self, group=None) -> SquareSumAccumulator:
        torch.distributed.all_reduce(self.sums, torch.distributed.ReduceOp.SUM, group)
        self.tokens = all_reduce_count(self.tokens, self.sums.device, group)
        return self

    def result(self) -> torch.Tensor:
        """The mean square per channel (zeros before any token)."""
        return self.sums / self.tokens if self.tokens else torch.zeros_like(self.sums)
