"""GPTQ Hessians: H = 2/N · Σ XᵀX over the real (non-padding) input tokens of a layer.

Scaling: this is 2 x the mean over tokens of x xᵀ. The GPTQ reference averages over *sequences*
(H = 2/S · Σ XᵀX with S sequences, padding included), i.e. our H times the mean tokens per
sequence. The GPTQ solution is invariant to that scalar (damping is a fraction of the mean diagonal),
so the two differ only where the reference counts padding tokens, which we never do.
"""
from __future__ import annotations

import torch

from engine.hooks import TokenIndex
from engine.scratch import take
from engine.stats.accumulators import all_reduce_count

HALF_PRECISION = (torch.bfloat16, torch.float16)

DTYPES = {"float32": torch.float32, "float64": torch.float64}  # by Precision label


def _half_products(x: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether to multiply in x's half precision into float32: a product of two bf16/fp16 numbers is
    exact in float32 and the tensor cores accumulate in float32, so the sums are those of upcasting
    first, at the half-precision GEMM's speed."""
    return x.is_cuda and x.dtype in HALF_PRECISION and target.dtype == torch.float32


def add_xtx_(target: torch.Tensor, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """target = beta·target + Σ_t x_t x_tᵀ (one GEMM), in target's dtype; returns target (beta=0:
    target's old values, even uninitialized ones, are ignored)."""
    if _half_products(x, target):
        product = torch.mm(x.T, x, out_dtype=torch.float32)
        return target.copy_(product) if beta == 0 else target.add_(product)
    x = x.to(target.dtype)
    return target.addmm_(x.T, x, beta=beta)


def upper_strip(channels: int) -> int:
    """Rows per strip of ``add_upper_xtx_``: at most eight strips (each a large GEMM), none under 256 rows."""
    return max(256, -(-channels // 8 // 64) * 64)


def add_upper_xtx_(target: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """target += Σ_t x_t x_tᵀ on and above the diagonal only (below it, some entries stay as they
    were): XᵀX is symmetric, so one GEMM per strip of rows [i, i+s) against columns [i, n) does
    (k+1)/2k of the full product's work for k strips (56% for eight). ``symmetric_`` completes it."""
    channels, strip = x.shape[1], upper_strip(x.shape[1])
    half = _half_products(x, target)
    x = x if half or x.dtype == target.dtype else take("gemm input", x.shape, target.dtype, x.device).copy_(x)
    for start in range(0, channels, strip):
        rows, columns = x[:, start:start + strip], x[:, start:]
        if half:
            target[start:start + strip, start:].add_(torch.mm(rows.T, columns, out_dtype=torch.float32))
        else:
            target[start:start + strip, start:].addmm_(rows.T, columns)
    return target


def symmetric_(upper: torch.Tensor) -> torch.Tensor:
    """The matrix whose upper triangle ``upper`` holds, mirrored below the diagonal in place, one
    strip of rows at a time: nothing of the matrix's size is allocated (three whole temporaries
    would be 2.5 GB for the 14,336 inputs of an 8B model's down projection)."""
    channels = upper.shape[0]
    strip = upper_strip(channels)
    for start in range(0, channels, strip):
        stop = min(start + strip, channels)
        block = upper[start:stop, start:stop]
        block.copy_(torch.triu(block) + torch.triu(block, 1).mT)
        upper[stop:, start:stop].copy_(upper[start:stop, stop:].mT)
    return upper


class HessianAccumulator:
    """Unnormalized Σ XᵀX (its upper triangle, mirrored on read) and the count of real tokens;
    normalized only on read.

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
        x = x.to(device=self.xtx.device)
        self.tokens += x.shape[0]
        add_upper_xtx_(self.xtx, x)  # mirrored once, when read

    @classmethod
    def of(cls, xtx: torch.Tensor, tokens: int) -> HessianAccumulator:
        """An accumulator holding sums made elsewhere (``xtx`` is taken, not copied)."""
        accumulator = cls.__new__(cls)
        accumulator.channels, accumulator.dtype, accumulator.xtx, accumulator.tokens = xtx.shape[0], xtx.dtype, xtx, tokens
        return accumulator

    def merge(self, other: HessianAccumulator) -> HessianAccumulator:
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {other.channels} channels into {self.channels}")
        self.xtx += other.xtx.to(self.xtx)
        self.tokens += other.tokens
        return self

    def all_reduce(self, group=None) -> HessianAccumulator:
        """Sum the same Hessian over every rank of ``group``, in place; returns self."""
        torch.distributed.all_reduce(self.xtx, torch.distributed.ReduceOp.SUM, group)
        self.tokens = all_reduce_count(self.tokens, self.xtx.device, group)
        return self

    def take(self) -> torch.Tensor:
        """H, normalized in place: the accumulator gives up its matrix instead of copying it."""
        hessian = symmetric_(self.xtx)
        hessian = hessian.mul_(2.0 / self.tokens) if self.tokens else hessian
        self.xtx = None
        return hessian

    def result(self) -> torch.Tensor:
        """H = 2/N · Σ XᵀX (zeros before any token)."""
        return symmetric_(self.xtx) * (2.0 / self.tokens) if self.tokens else torch.zeros_like(self.xtx)
