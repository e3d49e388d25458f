"""Quantizing weight matrices, alone or in stacks: round to nearest or GPTQ (several matrices that
read one input on one Hessian; matrices of one shape batched through one GPTQ column loop), or a
floating-point format, each with the grids it was rounded on and what it cost. What plans of dense
layers and MoE experts both call."""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from engine.errors import CalibscopeError
from engine.quant.formats.floats import FloatGrids, FloatWeight, NumberFormat, float_weight
from engine.quant.formats.grid import GroupGrids, IntWeight
from engine.quant.formats.rtn import rtn_quantized
from engine.quant.methods.gptq import FactorizationError, gptq_batch
from engine.quant.specs import WeightMethod, WeightSpec

# GPTQ batches layers of one shape up to this many bytes of weights and Hessians (float32).
GPTQ_BATCH_BYTES = 512 * 2**20


class QuantizedMatrix(NamedTuple):
    """One layer's quantization: the fake-quantized float32 [out, in] weight, the grids it lies on
    (what a checkpoint stores with the integers or element values), and what it cost on the calibration data."""

    fake: torch.Tensor
    grids: GroupGrids | FloatGrids
    costs: dict


def stored_weight(fake: torch.Tensor, grids: GroupGrids | FloatGrids) -> IntWeight | FloatWeight:
    """A weight already on ``grids`` as a checkpoint stores it: integers, or float-format element values."""
    if isinstance(grids, FloatGrids):
        return FloatWeight(grids.values(fake), grids)
    return IntWeight(grids.codes(fake), grids)


def quantize_groups(groups: list[list[torch.Tensor]], spec: WeightSpec, hessians: list[torch.Tensor | None],
                    names: list[str] | None = None) -> list[list[QuantizedMatrix]]:
    """Fake-quantized [out, in] weights and their costs, per group of matrices that share an input
    (and ``hessians[g]``, its Hessian), by the spec's method (``WEIGHT_METHODS``). GPTQ runs once on
    each group's stacked rows (its rows are independent given H, so this equals one call per layer)
    and once for all the groups given,
    which must stack to one shape (their arithmetic stays separate; the column loop is shared).
    ``names``: each group's layer, named when its Hessian does not factorize. Float formats round
    each matrix in its own dtype; an NVFP4 group shares one global scale (vLLM fuses its layers)."""
    if spec.format.is_float:
        return [_float_group(group, spec) for group in groups]
    return WEIGHT_METHODS[spec.method]([[matrix.float() for matrix in group] for group in groups], spec, hessians, names)


def _rounded(groups: list[list[torch.Tensor]], spec: WeightSpec, hessians: list[torch.Tensor | None],
             names: list[str] | None) -> list[list[QuantizedMatrix]]:
    """Round to nearest, matrix by matrix (no Hessian read)."""
    return [[QuantizedMatrix(*rtn_quantized(matrix, spec.bits, spec.group_size, spec.symmetric), {}) for matrix in group]
            for group in groups]


def _gptq(groups: list[list[torch.Tensor]], spec: WeightSpec, hessians: list[torch.Tensor | None],
          names: list[str] | None) -> list[list[QuantizedMatrix]]:
    """GPTQ on each group's stacked rows, every group through one batched column loop."""
    missing = [number for number, hessian in enumerate(hessians) if hessian is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        which = f"of {names[missing[0]]}{more}" if names else "of these layers"
        raise CalibscopeError(f"GPTQ needs the Hessians {which}, which were not collected: collect Hessians of every "
                              "layer you quantize (no name filter that leaves them out), run it sequentially, or use RTN.")
    stacked = _stacked([torch.cat(group) if len(group) > 1 else group[0] for group in groups])
    try:
        device = stacked.device
        results = gptq_batch(stacked, _stacked([h.to(device) for h in hessians]), spec.bits, spec.group_size,
                             spec.symmetric, spec.block_size, spec.damping, spec.act_order, spec.on_failure, spec.damping_step)
    except FactorizationError as error:
        where = names[error.index] if names else f"layer group {error.index}"
        raise CalibscopeError(f"{where}: {error}") from None
    out = []
    for group, hessian, result in zip(groups, hessians, results):
        sizes = [matrix.shape[0] for matrix in group]
        trace = float(torch.diagonal(hessian).double().sum())
        # a Hessian that did not factorize under the rtn policy: rounded to nearest, as llm-compressor does
        fallback = {"fallback": "rtn"} if result.fell_back else {}
        costs = {"damping": result.damping, "hessian_trace": trace, **fallback}
        out.append([QuantizedMatrix(weight, grids, {"gptq_loss": float(losses.sum()), **costs})
                    for weight, losses, grids in zip(result.weight.split(sizes), result.row_losses.split(sizes),
                                                     result.grids.rows(sizes))])
    return out


def _float_group(group: list[torch.Tensor], spec: WeightSpec) -> list[QuantizedMatrix]:
    shared = torch.stack([matrix.abs().max() for matrix in group]).max() if spec.format is NumberFormat.NVFP4 else None
    out = []
    for matrix in group:
        fake, stored = float_weight(matrix, spec.format, spec.group_size, shared)
        out.append(QuantizedMatrix(fake, stored.grids, {}))
    return out


def _stacked(matrices: list[torch.Tensor]) -> torch.Tensor:
    """[B, ...] of equal-shaped matrices; a batch of one is a view of its matrix, not a copy."""
    return matrices[0][None] if len(matrices) == 1 else torch.stack(matrices)


# A weight method: groups of float32 [out, in] matrices that share an input (with each group's Hessian,
# None where none was collected) -> their quantization. A new method is one function (in its own module
# when it is more than a few lines) and one entry here; what it needs from the calibration is a
# property of WeightSpec that engine.quant.request checks for every caller.
WEIGHT_METHODS: dict[WeightMethod, Callable[[list[list[torch.Tensor]], WeightSpec, list[torch.Tensor | None],
                                             list[str] | None], list[list[QuantizedMatrix]]]] = {
    WeightMethod.RTN: _rounded,
    WeightMethod.GPTQ: _gptq,
}
