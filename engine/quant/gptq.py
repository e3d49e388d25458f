"""GPTQ (Frantar et al., 2022): quantize a layer's weight column by column, each column's rounding
error spread over the columns not yet quantized, weighted by the inverse Hessian of the layer's
inputs, so that the layer's output on the calibration data changes as little as possible.

Follows the reference implementation (gptq.py's fasterquant): dead inputs (H_ii = 0) get H_ii = 1
and a zero weight column; damping λ·mean(diag H) on the diagonal; the upper Cholesky factor of
H⁻¹; lazy batch updates over blocks of ``block_size`` columns; group grids found on the
already-updated weights when a group starts; optional activation order (columns by decreasing
H_ii): ``ActOrder.DYNAMIC`` forms groups in that order (the reference's act-order; inference needs
the permutation, llm-compressor's ``g_idx``), ``ActOrder.STATIC`` fixes each group's grid from the
original weight in the original column order first (llm-compressor's "weight" ordering: nothing to
reorder at inference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import CalibscopeError
from engine.quant.grid import Grid, row_grid
from engine.quant.specs import ActOrder

MAX_DAMPING = 1.0
# Columns updated one by one inside a sub-block of this many; the rest of the block with one product
# per sub-block. The same arithmetic as one rank-1 update per column over the whole block, in far
# fewer, larger operations (the column loop's per-operation cost is what GPTQ spends on a layer).
INNER = 16


@dataclass
class GptqResult:
    weight: torch.Tensor  # fake-quantized, float32, original column order
    row_losses: torch.Tensor  # GPTQ's objective per row: Σ_columns (w - q)² / [H⁻¹]_ii² / 2
    damping: float  # the damping fraction that made the Cholesky succeed
    group_index: torch.Tensor | None = None  # ActOrder.DYNAMIC: each column's group (llm-compressor's g_idx)

    @property
    def loss(self) -> float:
        return float(self.row_losses.sum())


def inverse_cholesky(hessian: torch.Tensor, damping: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λ·mean(diag H)·I)⁻¹, raising λ tenfold until H factorizes."""
    mean_diagonal = torch.mean(torch.diag(hessian))
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    while damping <= MAX_DAMPING:
        factor, info = torch.linalg.cholesky_ex(hessian + damping * mean_diagonal * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper, damping
        damping *= 10
    raise CalibscopeError("GPTQ: the Hessian does not factorize even with damping 1.0 of its mean diagonal; "
                          "the calibration data may contain NaN or Inf activations.")


def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int = 0, symmetric: bool = True,
         block_size: int = 128, damping: float = 0.01, act_order: ActOrder = ActOrder.NONE) -> GptqResult:
    """Quantize ``weight`` [out, in] given H [in, in] (any scale: GPTQ's result does not depend on it)."""
    act_order = ActOrder(act_order)
    weight = weight.detach().clone().float()
    hessian = hessian.detach().clone().float().to(weight.device)
    columns = weight.shape[1]
    dead = torch.diag(hessian) == 0
    hessian[dead, dead] = 1
    weight[:, dead] = 0
    static = _static_group_grids(weight, bits, group_size, symmetric) if act_order is ActOrder.STATIC and group_size else None
    order = torch.argsort(torch.diag(hessian), descending=True) if act_order is not ActOrder.NONE else None
    if order is not None:
        weight, hessian = weight[:, order], hessian[order][:, order]
    hinv, used = inverse_cholesky(hessian, damping)
    # the original group of each column as processed (read once per layer, not once per column)
    static_groups = (order // group_size).tolist() if static is not None else None
    quantized = torch.zeros_like(weight)
    losses = torch.zeros_like(weight)
    grid = row_grid(weight, bits, symmetric) if not group_size else None
    inner = INNER if not group_size or group_size % INNER == 0 else 1  # sub-blocks never straddle a group start
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        block = weight[:, start:stop].clone()
        errors = torch.zeros_like(block)
        block_hinv = hinv[start:stop, start:stop]
        diagonal = block_hinv.diagonal().clone()
        for sub in range(0, stop - start, inner):
            sub_stop = min(sub + inner, stop - start)
            for i in range(sub, sub_stop):
                column = start + i
                if static is not None:  # the original column's group, fixed before any update
                    grid = static.grid(static_groups[column])
                elif group_size and column % group_size == 0:
                    grid = row_grid(_group(weight, block, start, column, group_size), bits, symmetric)
                w = block[:, i]
                q = grid.fake_quantize(w[:, None])[:, 0]  # the row grids broadcast over one column
                quantized[:, column] = q
                error = torch.sub(w, q).div_(diagonal[i])
                block[:, i:sub_stop].addr_(error, block_hinv[i, i:sub_stop], alpha=-1)  # the error, within the sub-block
                errors[:, i] = error
            # the rest of the block at once: the same lazy update GPTQ applies between blocks, one level down
            block[:, sub_stop:] -= errors[:, sub:sub_stop] @ block_hinv[sub:sub_stop, sub_stop:]
        losses[:, start:stop] = errors.square() / 2  # (w - q)² / [H⁻¹]_ii² / 2, for the whole block at once
        weight[:, stop:] -= errors @ hinv[start:stop, stop:]
    group_index = None
    if order is not None:
        inverse = torch.argsort(order)
        quantized = quantized[:, inverse]
        if act_order is ActOrder.DYNAMIC and group_size:
            group_index = (torch.arange(columns, device=weight.device) // group_size)[inverse]
    return GptqResult(quantized, losses.sum(1), used, group_index)


@dataclass
class _GroupGrids:
    """One grid per group of original columns: scale and zero [rows, groups]."""

    scale: torch.Tensor
    zero: torch.Tensor
    maxq: int

    def grid(self, group: int) -> Grid:
        return Grid(self.scale[:, group, None], self.zero[:, group, None], self.maxq)


def _static_group_grids(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> _GroupGrids:
    grids = [row_grid(weight[:, start:start + group_size], bits, symmetric) for start in range(0, weight.shape[1], group_size)]
    return _GroupGrids(torch.cat([g.scale for g in grids], 1), torch.cat([g.zero for g in grids], 1), grids[0].maxq)


def _group(weight: torch.Tensor, block: torch.Tensor, start: int, column: int, group_size: int) -> torch.Tensor:
    """The group's columns as they stand now: inside the current block the updated copy, after it
    the weights updated by earlier blocks (equal to the reference when groups align with blocks)."""
    stop = column + group_size
    inside = block[:, column - start:min(stop - start, block.shape[1])]
    beyond = weight[:, start + block.shape[1]:stop] if stop > start + block.shape[1] else weight[:, :0]
    return torch.cat([inside, beyond], dim=1)
