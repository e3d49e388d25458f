"""AWQ (Lin et al., 2024): protect the weights that meet large activations by scaling each input
channel up in the weights and down in the input, by a power of the channel's mean |x| chosen on the
output error, before the weights are rounded to nearest. The numerics here are llm-compressor
0.14's ``AWQModifier`` (transcribed; tests/test_awq.py holds it to the transcription), and the clip
search is AutoAWQ's ``auto_clip``; engine/quant/methods/awq_pass.py runs them over a calibration set.

For a mapping (an input x that the balance layers W read, divided by s where it is made):
    x̄_j = mean over the set's tokens of |x_j|,
    w̄_j = mean over every row of every balance layer of |W_ij| / (max |W| over the row's group + 1e-6),
    s(r) = (x̄^r / (w̄^(1-r) + 1e-4)).clamp(1e-4) (duo scaling) or x̄^r.clamp(1e-4) (inputs only),
           then divided by sqrt(max s · min s); NaN and infinite entries -> 1.
The grid (llm-compressor's duo_scaling=True): the identity first (r = 0, inputs only: s = 1), then
r = i / (n - 2) for i = 0 .. n - 2 with duo scaling; "inputs" and "both" are its other settings.
Each point replaces the balance layers by Q(W · s) / s (Q: the scheme's round-to-nearest on its own
min-max grid; the input's division by s folded into the weight, as the paper does) and measures the
mean squared change of the parent module's output over the set's tokens; the least loss wins (the
first on ties).

The clip search (AutoAWQ's, not in llm-compressor): per output row and group of the rescaled
weight, the largest |w| kept, clamp(w, -m, m), is searched over m = max|w| · (1 - i/20) for i < 10,
on the group's share of the output error, mean over tokens of (x_g · (Q(clamp(w_g)) - w_g))², which is
δᵀ H_g δ / n with H_g the group's block of Σ xxᵀ: every token of the set, where AutoAWQ takes every
k-th of them up to 512. Layers whose outputs meet in attention scores (q, k) are not clipped, by
AutoAWQ's list of their names.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch

from engine.quant.formats.rtn import group_width, padded_groups, rtn_quantized
from engine.quant.specs import AwqScaling, WeightSpec

SCALE_FLOOR, WEIGHT_FLOOR, GROUP_FLOOR = 1e-4, 1e-4, 1e-6  # llm-compressor's constants
CLIP_STEPS, CLIP_SHRINK = 20, 0.5  # AutoAWQ's auto_clip: n_grid 20, max_shrink 0.5
NOT_CLIPPED = re.compile(r"(^|\.)(q_|k_|query|key|Wqkv)")  # AutoAWQ's avoid_clipping


def grid_points(points: int, scaling: AwqScaling) -> list[tuple[float, bool]]:
    """(ratio, duo scaling) for each point searched, in llm-compressor's order."""
    scaling = AwqScaling(scaling)
    if scaling is AwqScaling.BOTH:
        half = points // 2
        return [(step / (half - 1), duo) for step in range(half) for duo in (False, True)]
    if scaling is AwqScaling.INPUTS:
        return [(step / (points - 1), False) for step in range(points)]
    return [(0.0, False)] + [(step / (points - 2), True) for step in range(points - 1)]


def weight_means(matrices: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """w̄ per input column: |W| normalised by the largest |W| of its quantization group (its row when
    per channel), averaged over every row of every matrix (in float64, as llm-compressor's: the duo
    scales come out in float64, and so do W · s and Q(W · s) / s before they are stored)."""
    total, rows = 0, 0
    for matrix in matrices:
        weight = matrix.float().abs()
        grouped = padded_groups(weight, group_size)
        grouped = grouped / (grouped.amax(dim=-1, keepdim=True) + GROUP_FLOOR)
        total = total + grouped.reshape(weight.shape[0], -1)[:, :weight.shape[1]].sum(0, dtype=torch.float64)
        rows += weight.shape[0]
    return total / rows


def candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor | None, ratio: float, duo: bool) -> torch.Tensor:
    """s for one grid point (see the module's docstring)."""
    if duo:
        scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + WEIGHT_FLOOR)).clamp(min=SCALE_FLOOR)
    else:
        scales = x_mean.pow(ratio).clamp(min=SCALE_FLOOR).view(-1)
    scales = scales / (scales.max() * scales.min()).sqrt()
    return torch.where(torch.isfinite(scales), scales, torch.ones_like(scales))


def balanced(matrix: torch.Tensor, scales: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """Q(W · s) / s in the weight's dtype: what the layer computes with its input's division by s folded
    in (W · s stored in the weight's dtype first, as llm-compressor copies it into the parameter)."""
    scaled = (matrix * scales.view(1, -1)).to(matrix.dtype)
    fake, _ = rtn_quantized(scaled, spec.bits, spec.group_size, spec.symmetric)
    return (fake / scales.view(1, -1)).to(matrix.dtype)


# (fakes of the balance layers, the loss above which the point cannot win) -> (its loss, whether all of it was
# measured): a loss may stop early once its partial sum passes the bound, the point being beaten already
Losses = Callable[[list[torch.Tensor], float], tuple[torch.Tensor, bool]]


def search_scales(x_mean: torch.Tensor, matrices: list[torch.Tensor], spec: WeightSpec, points: int, scaling: AwqScaling,
                  losses: Losses) -> tuple[torch.Tensor, int, list[tuple[float, bool]], torch.Tensor]:
    """The grid search of one mapping: ``losses(fakes, bound)`` is the parent's output error with the
    balance layers' weights replaced by ``fakes``. A point is cut short once its error passes the best
    so far: its loss is only known to be larger, and it could not have been chosen (a point equal to
    the best is never cut), so the choice is the full search's. Returns the best s, its index in the
    grid, the grid, and every point's loss (NaN: cut short, or not finite)."""
    grid = grid_points(points, scaling)
    x_mean = x_mean.float()
    w_mean = weight_means(matrices, spec.group_size).to(x_mean.device) if any(duo for _, duo in grid) else None
    best, bound, values = -1, float("inf"), []
    for index, (ratio, duo) in enumerate(grid):
        scales = candidate_scales(x_mean, w_mean, ratio, duo)
        loss, complete = losses([balanced(matrix, scales.to(matrix.device), spec) for matrix in matrices], bound)
        value = float(loss) if complete else float("nan")  # one synchronisation per point
        values.append(value)
        if value < bound:  # strictly smaller: the first of equal losses is kept, as llm-compressor keeps it
            best, bound = index, value
    values = torch.tensor(values, dtype=torch.float64)
    ratio, duo = grid[max(best, 0)]
    return candidate_scales(x_mean, w_mean, ratio, duo), best, grid, values


def group_blocks(hessian: torch.Tensor, group_size: int) -> torch.Tensor:
    """The diagonal blocks [groups, g, g] of an [in, in] matrix, one per group of g input columns (the
    last one padded with zeros)."""
    width = group_width(hessian.shape[0], group_size)
    missing = -hessian.shape[0] % width
    padded = torch.nn.functional.pad(hessian, (0, missing, 0, missing)) if missing else hessian
    groups = padded.shape[0] // width
    index = torch.arange(groups, device=hessian.device)
    return padded.reshape(groups, width, groups, width)[index, :, index, :]


def best_clips(matrix: torch.Tensor, blocks: torch.Tensor, spec: WeightSpec) -> torch.Tensor:
    """[out, groups] largest |w| to keep in each row's group (AutoAWQ's clip search), given the diagonal
    blocks of the input's Σ xxᵀ (any positive scale: only the order of the errors matters)."""
    grouped = padded_groups(matrix.float(), spec.group_size)  # [out, groups, g]
    largest = grouped.abs().amax(dim=-1)
    best, least = largest.clone(), torch.full_like(largest, float("inf"))
    blocks = blocks.to(grouped.device, torch.float32)
    for step in range(int(CLIP_SHRINK * CLIP_STEPS)):
        limit = largest * (1 - step / CLIP_STEPS)
        clamped = torch.maximum(torch.minimum(grouped, limit[..., None]), -limit[..., None]).reshape(grouped.shape[0], -1)
        fake, _ = rtn_quantized(clamped, spec.bits, group_width(clamped.shape[1], spec.group_size), spec.symmetric)
        delta = fake.reshape(grouped.shape) - grouped
        error = torch.einsum("ogi,gij,ogj->og", delta, blocks, delta)
        better = error < least
        least = torch.where(better, error, least)
        best = torch.where(better, limit, best)
    return best


def clipped(name: str) -> bool:
    """Whether AutoAWQ clips this layer (not the query and key projections)."""
    return not NOT_CLIPPED.search(name)
