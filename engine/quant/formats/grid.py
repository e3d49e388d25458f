"""Uniform quantization grids and fake quantization (round to the grid, keep the float).

A grid maps x to scale * (clamp(round(x / scale) + zero, 0, maxq) - zero), with maxq = 2^bits - 1.
Weights use GPTQ's construction (the range always contains 0; symmetric grids put the zero point
in the middle), so RTN and GPTQ round to exactly the same grid. A weight is rounded as
compressed-tensors rounds it, on its signed codes: round(x / scale + z) with z = zero - 2^(bits-1),
its zero point (0 on a symmetric grid). Adding calibscope's unsigned zero point instead, round(x /
scale + zero), loses x / scale's last bits to the larger sum, and a value just below a half rounds
up (1-2 weights a layer of SmolLM2 rotated, which 4-bit per-token inputs then amplify); at an exact
tie (x / scale = k + 0.5, common in weights dequantized from a GGUF) an odd z of an asymmetric grid
turns round half to even the other way than round(x / scale) + zero, the GPTQ reference's order,
which symmetric grids (z = 0) also equal.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


def rounds_scales(dtype: torch.dtype) -> bool:
    """Whether a checkpoint of a ``dtype`` model stores scales less precisely than float32
    (bfloat16, float16: llm-compressor's and compressed-tensors' scales are in the model's dtype).
    calibscope then rounds on those scales (kept in float32 tensors), so what it simulates is the
    checkpoint to the bit, as llm-compressor's own fake quantization is."""
    return dtype.is_floating_point and torch.finfo(dtype).bits < 32


@dataclass
class Grid:
    scale: torch.Tensor
    zero: torch.Tensor
    maxq: int

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(x / self.scale) + self.zero, 0, self.maxq)
        return self.scale * (q - self.zero)

    def to(self, device: torch.device) -> Grid:
        return Grid(self.scale.to(device), self.zero.to(device), self.maxq)

    @property
    def clip(self) -> float:
        """The largest |x| the grid holds (its top level)."""
        return float((self.scale * (self.maxq - self.zero)).max())


def on_grid(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """A weight rounded as compressed-tensors' fake_quantize rounds it, on signed codes (see the
    module's docstring): scale · (clamp(round(x / scale + z), -h, h - 1) - z), z = zero - h, h = 2^(bits-1)."""
    half = (maxq + 1) // 2
    signed_zero = zero - half
    q = torch.clamp(torch.round(x / scale + signed_zero), -half, maxq - half)
    return scale * (q - signed_zero)


def minmax_grid(xmin: torch.Tensor, xmax: torch.Tensor, bits: int, symmetric: bool) -> Grid:
    """GPTQ's Quantizer.find_params for given ranges (any shape): the range is widened to contain
    0; a symmetric range is [-m, m] with m = max(|min|, max); an empty range becomes [-1, 1]."""
    maxq = 2**bits - 1
    xmin = torch.minimum(xmin, torch.zeros_like(xmin))
    xmax = torch.maximum(xmax, torch.zeros_like(xmax))
    if symmetric:
        xmax = torch.maximum(-xmin, xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if symmetric else torch.round(-xmin / scale)
    return Grid(scale, zero, maxq)


def row_grid(weight: torch.Tensor, bits: int, symmetric: bool) -> Grid:
    """One grid per row of ``weight`` [..., rows, columns], shaped to broadcast over columns."""
    grid = minmax_grid(weight.amin(dim=-1), weight.amax(dim=-1), bits, symmetric)
    return Grid(grid.scale[..., None], grid.zero[..., None], grid.maxq)


def clip_grid(clip: torch.Tensor, bits: int) -> Grid:
    """Signed symmetric grid for activations clipped to [-clip, clip]: levels -2^(b-1)..2^(b-1)-1
    with scale clip / (2^(b-1) - 1), the int8 convention of static activation quantization."""
    half = 2 ** (bits - 1)
    scale = clip.clamp(min=torch.finfo(torch.float32).tiny) / (half - 1)
    return Grid(scale, torch.full_like(scale, float(half)), 2 * half - 1)


@dataclass
class GroupGrids:
    """The grids a quantized [out, in] weight was rounded on: one per output row and group of input
    columns, ``scale`` and ``zero`` [out, groups] (zero: an integer in 0..maxq). A column's group is
    column // group_size, or ``group_index[column]`` where act order formed the groups in another
    order (llm-compressor's ``g_idx``). group_size 0: one grid per row. What a checkpoint stores."""

    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int
    symmetric: bool
    group_index: torch.Tensor | None = None

    @property
    def maxq(self) -> int:
        return 2**self.bits - 1

    def column_groups(self, columns: int) -> torch.Tensor:
        """Each input column's group: [in]."""
        if self.group_index is not None:
            return self.group_index
        if not self.group_size:
            return torch.zeros(columns, dtype=torch.long, device=self.scale.device)
        return torch.arange(columns, device=self.scale.device) // self.group_size

    def per_column(self, columns: int) -> Grid:
        """One grid per element of the [out, in] weight (scale and zero expanded over columns)."""
        groups = self.column_groups(columns)
        return Grid(self.scale[:, groups], self.zero[:, groups], self.maxq)

    def _grouped(self, columns: int) -> bool:
        """Whether [out, in] reads as [out, groups, group_size] against scale [out, groups, 1]
        (consecutive groups that divide the columns): no grid is expanded to the weight's size."""
        return self.group_index is None and (not self.group_size or columns % self.group_size == 0)

    def _broadcast(self, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``matrix`` [out, in] as [out, groups, size] with scale and zero [out, groups, 1] (views)."""
        rows, columns = matrix.shape
        size = self.group_size or columns
        return matrix.reshape(rows, columns // size, size), self.scale[..., None], self.zero[..., None]

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        if not self._grouped(weight.shape[1]):
            grid = self.per_column(weight.shape[1])
            return on_grid(weight, grid.scale, grid.zero, self.maxq)
        values, scale, zero = self._broadcast(weight)
        return on_grid(values, scale, zero, self.maxq).reshape(weight.shape)

    def codes(self, fake: torch.Tensor) -> torch.Tensor:
        """The integers (0..maxq, uint8) of a weight already on these grids: fake / scale + zero. In
        float32 fake = scale · k for an integer k, so fake / scale is k to within an ulp and rounds to it."""
        if not self._grouped(fake.shape[1]):
            grid = self.per_column(fake.shape[1])
            return (torch.round(fake.float() / grid.scale) + grid.zero).clamp_(0, self.maxq).to(torch.uint8)
        values, scale, zero = self._broadcast(fake.float())
        return (values / scale).round_().add_(zero).clamp_(0, self.maxq).to(torch.uint8).reshape(fake.shape)

    def stored_in(self, dtype: torch.dtype) -> GroupGrids:
        """These grids with each scale as a checkpoint of ``dtype`` stores it (see ``rounds_scales``)."""
        return replace(self, scale=self.scale.to(dtype).float()) if rounds_scales(dtype) else self

    def rows(self, sizes: list[int]) -> list[GroupGrids]:
        """The grids of consecutive row blocks (layers stacked on one Hessian), one per size."""
        return [GroupGrids(scale, zero, self.bits, self.group_size, self.symmetric, self.group_index)
                for scale, zero in zip(self.scale.split(sizes), self.zero.split(sizes))]


@dataclass
class IntWeight:
    """A quantized weight as integers on its grids: W[r, c] = scale[r, g] · (codes[r, c] - zero[r, g])."""

    codes: torch.Tensor  # uint8 [out, in]
    grids: GroupGrids

    def stored_in(self, dtype: torch.dtype) -> IntWeight:
        """The same integers on the scales as a checkpoint of ``dtype`` stores them (see GroupGrids.stored_in)."""
        grids = self.grids.stored_in(dtype)
        return self if grids is self.grids else IntWeight(self.codes, grids)

    def dequantize(self) -> torch.Tensor:
        if not self.grids._grouped(self.codes.shape[1]):
            grid = self.grids.per_column(self.codes.shape[1])
            return grid.scale * (self.codes.float() - grid.zero)
        codes, scale, zero = self.grids._broadcast(self.codes)
        return (scale * (codes.float() - zero)).reshape(self.codes.shape)
