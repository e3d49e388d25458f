"""GPTQ (Frantar et al., 2022): quantize a layer's weight column by column, each column's rounding
error spread over the columns not yet quantized, weighted by the inverse Hessian of the layer's
inputs, so that the layer's output on the calibration data changes as little as possible.

Follows the reference implementation (gptq.py's fasterquant): dead inputs (H_ii = 0) get H_ii = 1
and a zero weight column; damping λ·mean(diag H) on the diagonal; the upper Cholesky factor of
H⁻¹; lazy batch updates over blocks of ``block_size`` columns; group grids found when a group
starts, on the weights as the reference holds them then (updated by the earlier blocks' errors);
optional activation order (columns by decreasing H_ii): ``ActOrder.DYNAMIC`` forms groups in that
order (the reference's act-order; inference needs the permutation, llm-compressor's ``g_idx``),
``ActOrder.STATIC`` fixes each group's grid from the original weight in the original column order
first (llm-compressor's "weight" ordering: nothing to reorder at inference), ``ActOrder.GROUP_AWARE``
keeps the original groups whole and contiguous in the processing order (GPTQModel's
act_group_aware), so the grid found when a group starts is that original group's.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.errors import CalibscopeError
from engine.quant.formats.grid import Grid, GroupGrids, row_grid
from engine.quant.formats.rtn import rtn_quantized
from engine.quant.specs import ActOrder, CholeskyFailure

MAX_DAMPING = 1.0
# Columns updated one by one inside a sub-block of this many; the rest of the block with one product
# per sub-block. The same arithmetic as one rank-1 update per column over the whole block, in far
# fewer, larger operations (the column loop's per-operation cost is what GPTQ spends on a layer).
INNER = 16


@dataclass
class GptqResult:
    weight: torch.Tensor  # fake-quantized, float32, original column order
    row_losses: torch.Tensor  # GPTQ's objective per row: Σ_columns (w - q)² / [H⁻¹]_ii² / 2
    damping: float | None  # the damping fraction that made the Cholesky succeed (None: it never did)
    grids: GroupGrids  # what each row and group was rounded on, in the order a checkpoint stores them

    @property
    def group_index(self) -> torch.Tensor | None:
        """ActOrder.DYNAMIC: each column's group (llm-compressor's g_idx); None: column // group_size."""
        return self.grids.group_index

    @property
    def fell_back(self) -> bool:
        """CholeskyFailure.RTN left this layer rounded to nearest: its Hessian never factorized."""
        return self.damping is None

    @property
    def loss(self) -> float:
        return float(self.row_losses.sum())


class FactorizationError(CalibscopeError):
    """A damped Hessian did not factorize; ``index``: which matrix of the batch (the caller names the layer)."""

    def __init__(self, index: int, damping: float, policy: CholeskyFailure) -> None:
        self.index, self.damping, self.policy = index, damping, policy
        advice = ("raise the damping, use the stepwise or tenfold policy, or fall back to RTN"
                  if policy is CholeskyFailure.RAISE else "the calibration data may contain NaN or Inf activations")
        super().__init__(f"GPTQ: the Hessian does not factorize with damping {damping:g} of its mean diagonal: {advice}.")


def _next_damping(damping: float, policy: CholeskyFailure, step: float) -> float:
    return damping * 10 if policy is CholeskyFailure.TENFOLD else damping + step


def inverse_cholesky(hessian: torch.Tensor, damping: float, policy: CholeskyFailure = CholeskyFailure.TENFOLD,
                     step: float = 0.01, undamped: Callable[[int], torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, list[float | None]]:
    """Upper Cholesky factor of (H + λ·mean(diag H)·I)⁻¹ for H [B, n, n]; a matrix that does not
    factorize is handled as ``policy`` says (tenfold or stepwise: λ raised until it does, at most
    1.0; rtn: its λ is None and its factor a stand-in; raise: FactorizationError). Returns the
    factors and each matrix's λ.

    ``hessian`` is consumed: its memory holds the factor, then the inverse, then the inverse's
    factor (one n x n matrix besides the result, where separate ones were three: 822 MB each for
    14,336 inputs). A retry damps matrix b again from ``undamped(b)`` (default: a copy kept first)."""
    if undamped is None:
        kept = hessian.clone()
        undamped = lambda index: kept[index:index + 1].clone()
    upper, ok = _damped_inverse_cholesky_(hessian, damping)
    used: list[float | None] = [damping] * hessian.shape[0]
    for index in (~ok).nonzero().flatten().tolist():  # rare: one matrix at a time, ever more damped
        if policy is CholeskyFailure.RTN:
            used[index] = None
            continue
        if policy is CholeskyFailure.RAISE:
            raise FactorizationError(index, damping, policy)
        while True:
            used[index] = round(_next_damping(used[index], policy, step), 12)
            if used[index] > MAX_DAMPING:
                raise FactorizationError(index, MAX_DAMPING, policy)
            factor, factored = _damped_inverse_cholesky_(undamped(index), used[index])
            if bool(factored[0]):
                upper[index] = factor[0]
                break
    return upper, used


def _damped_inverse_cholesky_(hessian: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One attempt for the whole batch, in ``hessian``'s memory (overwritten): the factors, and
    which matrices factorized (twice). LAPACK factorizes in place: the results are those of
    separate outputs, bit for bit."""
    diagonal = hessian.diagonal(dim1=-2, dim2=-1)
    diagonal += damping * diagonal.mean(-1, keepdim=True)
    info = torch.empty(hessian.shape[:-2], dtype=torch.int32, device=hessian.device)
    torch.linalg.cholesky_ex(hessian, out=(hessian, info))
    ok = info == 0
    if not bool(ok.all()):  # once per layer batch: a stand-in for the failures, so the batch goes on
        hessian[~ok] = torch.eye(hessian.shape[-1], dtype=hessian.dtype, device=hessian.device)
    torch.cholesky_inverse(hessian, out=hessian)
    # H⁻¹ = L Lᵀ, so Lᵀ is its upper factor: LAPACK's lower factorization is the faster one here
    torch.linalg.cholesky_ex(hessian, out=(hessian, info))
    return hessian.mT.contiguous(), ok & (info == 0)


def _owned_hessian(hessian: torch.Tensor, order: torch.Tensor | None, dead: torch.Tensor) -> torch.Tensor:
    """A float32 copy of H [B, n, n] in the processing order (rows, then columns strip by strip in
    place: one copy of H, not two), dead inputs' H_ii set to 1 as the reference does."""
    if order is None:
        owned = hessian.to(torch.float32, copy=True)
    else:
        owned = _permuted(hessian.to(torch.float32), order, -2)
        strip = 256
        for matrix, columns in zip(owned, order):
            for start in range(0, matrix.shape[0], strip):
                rows = matrix[start:start + strip]
                rows.copy_(rows.index_select(1, columns))
    owned.diagonal(dim1=-2, dim2=-1).masked_fill_(dead if order is None else _permuted(dead, order, -1), 1)
    return owned


def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int = 0, symmetric: bool = True,
         block_size: int = 128, damping: float = 0.01, act_order: ActOrder = ActOrder.NONE,
         policy: CholeskyFailure = CholeskyFailure.TENFOLD, step: float = 0.01) -> GptqResult:
    """Quantize ``weight`` [out, in] given H [in, in] (any scale: GPTQ's result does not depend on it)."""
    return gptq_batch(weight[None], hessian[None], bits, group_size, symmetric, block_size, damping, act_order, policy, step)[0]


def gptq_batch(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int = 0, symmetric: bool = True,
               block_size: int = 128, damping: float = 0.01, act_order: ActOrder = ActOrder.NONE,
               policy: CholeskyFailure = CholeskyFailure.TENFOLD, step: float = 0.01) -> list[GptqResult]:
    """GPTQ on a batch of independent layers of one shape: weights [B, out, in], Hessians [B, in, in].

    Each layer's arithmetic is exactly that of its own call; the column loop, whose per-step cost is
    what GPTQ spends on small layers, runs once for the batch (the 18 q/k/v groups of a model, say).
    The weights are held transposed, [B, in, out]: the column being quantized is then a contiguous
    row, which a CPU reads and updates several times faster than a strided column.
    """
    act_order, policy = ActOrder(act_order), CholeskyFailure(policy)
    original = weight
    weight = weight.detach().clone().float()
    given = hessian.detach().to(weight.device)  # the caller's: read here, never written
    columns = weight.shape[-1]
    dead = given.diagonal(dim1=-2, dim2=-1) == 0
    weight.masked_fill_(dead[:, None, :], 0)
    static = _static_group_grids(weight, bits, group_size, symmetric) if act_order is ActOrder.STATIC and group_size else None
    # H_ii = 0 reads as 1 (the reference's dead inputs): the order sees what the reference's does
    order = _column_order(given.diagonal(dim1=-2, dim2=-1).float().masked_fill(dead, 1), act_order, group_size)
    if order is not None:
        weight = _permuted(weight, order, -1)

    def undamped(index: int) -> torch.Tensor:  # a retry's matrix, made again from the caller's
        return _owned_hessian(given[index:index + 1], None if order is None else order[index:index + 1],
                              dead[index:index + 1])

    hinv, used = inverse_cholesky(_owned_hessian(given, order, dead), damping, policy, step, undamped)
    columns_first = weight.transpose(1, 2).contiguous()  # [B, in, out]; becomes the quantized weight block by block
    row_losses = torch.zeros(weight.shape[:2], dtype=torch.float32, device=weight.device)
    grid = _column_grid(columns_first, bits, symmetric) if not group_size else None
    found: list[_Rounding] = [grid] if grid is not None else []  # each group's grid when it started, in processing order
    inner = INNER if not group_size or group_size % INNER == 0 else 1  # sub-blocks never straddle a group start
    for start in range(0, columns, block_size):
        stop = min(start + block_size, columns)
        block = columns_first[:, start:stop]  # a view: each column is replaced by its quantized values
        errors = torch.empty_like(block)
        block_hinv = hinv[:, start:stop, start:stop]
        diagonal = block_hinv.diagonal(dim1=-2, dim2=-1)[..., None, None].clone()  # [B, columns, 1, 1]
        # a group that starts inside the block takes its grid from the block as it stood at the block's start
        at_start = block.clone() if static is None and _group_starts_inside(start, stop, group_size) else None
        # the block's columns' grids (each its original group's) laid out once: views per column, not a
        # lookup; per block, not for the whole layer (three [in, out] copies: 705 MB for 14,336 inputs)
        static_grids = static.per_column(order[:, start:stop] // group_size) if static is not None else None
        for sub in range(0, stop - start, inner):
            sub_stop = min(sub + inner, stop - start)
            # the sub-block's per-column views, made in one call each: slicing per column costs the loop more than its arithmetic
            part = block[:, sub:sub_stop]
            ws, es = part.split(1, dim=1), errors[:, sub:sub_stop].split(1, dim=1)  # [B, 1, out] each
            ds = diagonal[:, sub:sub_stop].unbind(1)
            hrows = block_hinv[:, sub:sub_stop, sub:sub_stop, None].unbind(1)  # [B, inner, 1] each
            grids = static_grids.columns(sub, sub_stop) if static_grids is not None else None
            for k, (w, error) in enumerate(zip(ws, es)):
                column = start + sub + k
                if grids is not None:  # the original column's group, fixed before any update
                    grid = grids[k]
                elif group_size and column % group_size == 0:
                    grid = _column_grid(_group(columns_first, at_start, start, column, group_size), bits, symmetric)
                    found.append(grid)
                q = grid.quantize(w)
                torch.sub(w, q, out=error).div_(ds[k])
                if k + 1 < len(ws):  # the error, within the sub-block: a rank-1 update per layer
                    part[:, k + 1:].baddbmm_(hrows[k][:, k + 1:], error, alpha=-1)
                w.copy_(q)
            # the rest of the block at once: the same lazy update GPTQ applies between blocks, one level down
            block[:, sub_stop:] -= block_hinv[:, sub:sub_stop, sub_stop:].transpose(1, 2) @ errors[:, sub:sub_stop]
        row_losses += errors.square().sum(1) / 2  # Σ (w - q)² / [H⁻¹]_ii² / 2 over the block's columns
        columns_first[:, stop:] -= hinv[:, start:stop, stop:].transpose(1, 2) @ errors
    quantized = columns_first.transpose(1, 2)
    grids = _stored_grids(static if static is not None else _Rounding.stacked(found), order, act_order, bits, group_size,
                          symmetric)
    if order is not None:
        quantized = _permuted(quantized, torch.argsort(order, dim=-1), -1)
    results = [GptqResult(quantized[b].contiguous(), row_losses[b], used[b], grids[b]) for b in range(weight.shape[0])]
    for b, damped in enumerate(used):  # llm-compressor's fallback: the layer rounded to nearest
        if damped is None:
            fake, rounded = rtn_quantized(original[b], bits, group_size, symmetric)
            results[b] = GptqResult(fake, torch.full_like(row_losses[b], float("nan")), None, rounded)
    return results


def _stored_grids(grids: _Rounding, order: torch.Tensor | None, act_order: ActOrder, bits: int, group_size: int,
                  symmetric: bool) -> list[GroupGrids]:
    """Each layer's grids [out, groups] in the order a checkpoint keeps them, from [B, groups, out]
    in the order they were found. Static grids are already per original group; dynamic act order
    keeps its processing groups, with each column's group (g_idx); group-aware order found the
    original groups whole, in another order, so each goes back to its place."""
    scale, zero = grids.scale.transpose(1, 2), (-grids.low).transpose(1, 2)  # [B, out, groups]
    layers = scale.shape[0]
    group_index = [None] * layers
    if order is not None and group_size and act_order is ActOrder.DYNAMIC:
        positions = torch.argsort(order, dim=-1)  # where each original column was processed
        group_index = list(positions // group_size)
    elif order is not None and group_size and act_order is ActOrder.GROUP_AWARE:
        original_group = order[:, ::group_size] // group_size  # [B, groups]: which group each processing group was
        scale = torch.empty_like(scale).scatter_(2, original_group[:, None].expand_as(scale), scale)
        zero = torch.empty_like(zero).scatter_(2, original_group[:, None].expand_as(zero), zero)
    return [GroupGrids(scale[b].contiguous(), zero[b].contiguous(), bits, group_size, symmetric, group_index[b])
            for b in range(layers)]


def _permuted(batch: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``batch[b]`` indexed by ``index[b]`` along ``dim`` (of the batch) for every layer b: one
    index_select per layer, several times faster on a CPU than one gather with an expanded index,
    each written into its place in one output (a Hessian of 14,336 inputs is 822 MB a copy)."""
    shape = list(batch.shape)
    shape[dim] = index.shape[-1]  # as many as the index selects (a column's group: more than the groups)
    out = torch.empty(shape, dtype=batch.dtype, device=batch.device)  # contiguous, as the stack it replaces
    for matrix, rows, target in zip(batch, index, out):
        torch.index_select(matrix, dim - 1 if dim > 0 else dim, rows, out=target)
    return out


def _column_order(diagonal: torch.Tensor, act_order: ActOrder, group_size: int) -> torch.Tensor | None:
    """The processing order of each layer's columns ([B, in] -> [B, in]; None: their own order)."""
    if act_order is ActOrder.NONE:
        return None
    if act_order is not ActOrder.GROUP_AWARE:
        return torch.argsort(diagonal, dim=-1, descending=True)
    return group_aware_order(diagonal, group_size or diagonal.shape[-1])


def group_aware_order(diagonal: torch.Tensor, group_size: int) -> torch.Tensor:
    """GPTQModel's GAR permutation: within each whole group, columns by decreasing H_ii; groups by
    decreasing maximum H_ii (stable); a trailing partial group last, in its own order."""
    layers, columns = diagonal.shape
    whole = columns // group_size * group_size
    values, local = diagonal[:, :whole].reshape(layers, -1, group_size).sort(dim=-1, descending=True)
    ranked = torch.argsort(values[..., 0], dim=-1, descending=True, stable=True)  # [B, groups]
    local = local + torch.arange(0, whole, group_size, device=diagonal.device)[None, :, None]
    grouped = local.gather(1, ranked[..., None].expand_as(local)).reshape(layers, whole)
    tail = torch.arange(whole, columns, device=diagonal.device).expand(layers, -1)
    return torch.cat([grouped, tail], dim=-1)


@dataclass
class _Rounding:
    """Grids as GPTQ's column loop applies them, for the [B, columns, out] layout: q =
    clamp(round(w / scale + z) - z, low, high) · scale with low = -zero, high = maxq - zero and z =
    zero - 2^(bits-1), compressed-tensors' signed zero point. That is ``GroupGrids.fake_quantize``
    (compressed-tensors' round on signed codes, engine/quant/formats/grid.py) bit for bit. Symmetric
    grids' z is 0, and their loop runs four operations instead of six, which counts: the loop's
    per-column operations are what GPTQ spends on a layer."""

    scale: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    signed_zero: torch.Tensor | None = None  # None: every signed zero point 0 (symmetric grids)

    @classmethod
    def of(cls, grid: Grid, symmetric: bool) -> _Rounding:
        return cls(grid.scale, -grid.zero, grid.maxq - grid.zero, None if symmetric else grid.zero - (grid.maxq + 1) // 2)

    def _parts(self) -> tuple[torch.Tensor, ...]:
        parts = (self.scale, self.low, self.high)
        return parts if self.signed_zero is None else (*parts, self.signed_zero)

    @classmethod
    def stacked(cls, grids: list[_Rounding]) -> _Rounding:
        """Grids of one column each ([B, 1, out]) as one [B, groups, out]."""
        return cls(*(torch.cat(parts, dim=1) for parts in zip(*(g._parts() for g in grids))))

    def per_column(self, groups: torch.Tensor) -> _Rounding:
        """From one grid per group [B, groups, out] to each column's group's ``groups`` [B, columns]: [B, columns, out]."""
        return _Rounding(*(_permuted(t, groups, 1) for t in self._parts()))

    def columns(self, start: int, stop: int) -> list[_Rounding]:
        """Positions ``start`` to ``stop`` of every layer, one [B, 1, out] each (views)."""
        splits = (t[:, start:stop].split(1, dim=1) for t in self._parts())
        return [_Rounding(*parts) for parts in zip(*splits)]

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        q = torch.div(w, self.scale)
        if self.signed_zero is None:
            q.round_()
        else:
            q.add_(self.signed_zero).round_().sub_(self.signed_zero)
        return q.clamp_(self.low, self.high).mul_(self.scale)


def _column_grid(columns_first: torch.Tensor, bits: int, symmetric: bool) -> _Rounding:
    """One grid per output row over the given columns of a [B, columns, out] layout: [B, 1, out]."""
    grid = row_grid(columns_first.transpose(1, 2), bits, symmetric)
    return _Rounding.of(Grid(grid.scale.transpose(1, 2), grid.zero.transpose(1, 2), grid.maxq), symmetric)


def _static_group_grids(weight: torch.Tensor, bits: int, group_size: int, symmetric: bool) -> _Rounding:
    """One grid per group of original columns, from the original [B, out, in] weights before any update: [B, groups, out]."""
    grids = [row_grid(weight[..., start:start + group_size], bits, symmetric) for start in range(0, weight.shape[-1], group_size)]
    scale, zero = torch.cat([g.scale for g in grids], -1), torch.cat([g.zero for g in grids], -1)
    return _Rounding.of(Grid(scale.transpose(1, 2).contiguous(), zero.transpose(1, 2).contiguous(), grids[0].maxq), symmetric)


def _group_starts_inside(start: int, stop: int, group_size: int) -> bool:
    """Whether a group starts strictly inside the block [start, stop) (never when groups align with blocks)."""
    return bool(group_size) and (start // group_size + 1) * group_size < stop


def _group(columns_first: torch.Tensor, at_start: torch.Tensor | None, start: int, column: int,
           group_size: int) -> torch.Tensor:
    """The group's columns as the reference's fasterquant reads them when the group starts (its W):
    every column updated by the earlier blocks' errors only. The reference applies the current
    block's errors to a copy of the block (W1) and to the columns beyond it at the block's end, so
    for a group starting inside the block (``at_start``: the block at its start) the block's own
    columns are taken as they were then. At a block's first column the two are the same."""
    if column == start or at_start is None:
        return columns_first[:, column:column + group_size]
    beyond = columns_first[:, start + at_start.shape[1]:column + group_size]
    return torch.cat([at_start[:, column - start:], beyond], dim=1)
