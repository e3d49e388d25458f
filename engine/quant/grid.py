"""Uniform quantization grids and fake quantization (round to the grid, keep the float).

A grid maps x to scale * (clamp(round(x / scale) + zero, 0, maxq) - zero), with maxq = 2^bits - 1.
Weights use GPTQ's construction (the range always contains 0; symmetric grids put the zero point
in the middle), so RTN and GPTQ round to exactly the same grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Grid:
    scale: torch.Tensor
    zero: torch.Tensor
    maxq: int

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(torch.round(x / self.scale) + self.zero, 0, self.maxq)
        return self.scale * (q - self.zero)


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
