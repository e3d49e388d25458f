"""From a QuantSpec and the calibration results (statistics, Hessians) to the weights and input
grids to swap in, with what each layer's quantization costs on the calibration data."""
from __future__ import annotations

import time
from typing import NamedTuple

import pandas as pd
import torch

from engine.errors import CalibscopeError
from engine.hooks import input_sharing, select_layers
from engine.models import LinearLayer, LoadedModel
from engine.models.layers import LAYER_KINDS
from engine.progress import Progress, no_progress, scaled
from engine.quant.apply import QuantizedModel, original_weights
from engine.quant.awq_pass import awq_scaling
from engine.quant.floats import FloatGrids, FloatWeight, NumberFormat, float_weight
from engine.quant.gptq import FactorizationError, gptq_batch
from engine.quant.grid import GroupGrids, IntWeight
from engine.quant.inputs import input_quantizer
from engine.quant.measures import output_error
from engine.quant.ranges import relative_error
from engine.quant.rtn import rtn_quantized
from engine.quant.smoothing import smooth
from engine.quant.specs import Granularity, QuantSpec, WeightSpec
from engine.sampling import CalibrationSet
from engine.stats import StatsReport
from engine.stats.hessian_report import HessianReport


def quantizable_layers(model: torch.nn.Module, spec: QuantSpec) -> list[LinearLayer]:
    """Every layer type the engine handles whose name matches the spec, the LM head excluded."""
    return select_layers(model, LAYER_KINDS, spec.name_pattern, False)


def _shared_groups(layers: list[LinearLayer], sharing: dict[str, str] | None, together: bool) -> list[list[LinearLayer]]:
    """Layers that read the same input (``sharing``: name -> the first of them) together when
    ``together`` (GPTQ: one Hessian; NVFP4: one global scale), else one by one."""
    if not together or sharing is None:
        return [[layer] for layer in layers]
    groups: dict[str, list[LinearLayer]] = {}
    for layer in layers:
        groups.setdefault(sharing.get(layer.name, layer.name), []).append(layer)
    return list(groups.values())


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


class LayerQuantization(NamedTuple):
    original: torch.Tensor  # the layer's float32 [out, in] weight
    fake: torch.Tensor
    grids: GroupGrids | FloatGrids
    costs: dict  # with the layer's share of the batch's seconds

    def integers(self) -> IntWeight | FloatWeight:
        return stored_weight(self.fake, self.grids)


def quantize_groups(groups: list[list[torch.Tensor]], spec: WeightSpec, hessians: list[torch.Tensor | None],
                    names: list[str] | None = None) -> list[list[QuantizedMatrix]]:
    """Fake-quantized [out, in] weights and their costs, per group of matrices that share an input
    (and ``hessians[g]``, its Hessian). GPTQ runs once on each group's stacked rows (its rows are
    independent given H, so this equals one call per layer) and once for all the groups given,
    which must stack to one shape (their arithmetic stays separate; the column loop is shared).
    ``names``: each group's layer, named when its Hessian does not factorize. Float formats round
    each matrix in its own dtype; an NVFP4 group shares one global scale (vLLM fuses its layers)."""
    if spec.format.is_float:
        return [_float_group(group, spec) for group in groups]
    groups = [[matrix.float() for matrix in group] for group in groups]
    if not spec.needs_hessians:
        return [[QuantizedMatrix(*rtn_quantized(matrix, spec.bits, spec.group_size, spec.symmetric), {}) for matrix in group]
                for group in groups]
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


def _batches(groups: list[list[LinearLayer]], gptq_batches: bool) -> list[list[list[LinearLayer]]]:
    """Groups of one stacked shape together, each batch within GPTQ_BATCH_BYTES; one group per
    batch when nothing is gained (RTN). GPTQ's batches go widest input first: the one whose inverse
    Hessian takes the most memory runs before any other batch's results are held."""
    if not gptq_batches:
        return [[group] for group in groups]
    by_shape: dict[tuple[int, int], list[list[list[LinearLayer]]]] = {}
    for group in groups:
        rows, columns = sum(layer.out_features for layer in group), group[0].in_features
        batches = by_shape.setdefault((rows, columns), [[]])
        if batches[-1] and (len(batches[-1]) + 1) * (rows + columns) * columns * 4 > GPTQ_BATCH_BYTES:
            batches.append([])
        batches[-1].append(group)
    shapes = sorted(by_shape, key=lambda shape: -shape[1])  # stable: equal widths keep their first-seen order
    return [batch for shape in shapes for batch in by_shape[shape]]


def quantized_weights(layers: list[LinearLayer], matrices: dict[str, torch.Tensor], spec: WeightSpec,
                      hessians: HessianReport | None, progress: Progress = no_progress,
                      sharing: dict[str, str] | None = None) -> dict[str, LayerQuantization]:
    """Each layer's quantization, for the layers in ``matrices`` (their original [out, in] weights,
    from ``original_weights``); ``sharing``: which layers read one input (default: the Hessians')."""
    done: dict[str, LayerQuantization] = {}
    uneven = next((layer for layer in layers if spec.format.block and layer.in_features % spec.format.block), None)
    if uneven is not None:
        raise CalibscopeError(f"{uneven.name} has {uneven.in_features} inputs, which do not split into {spec.format.value}'s "
                              f"blocks of {spec.format.block}; leave it out (name pattern) or use another format.")
    together = spec.needs_hessians or spec.format is NumberFormat.NVFP4
    sharing = sharing if sharing is not None else (hessians.shared_with if hessians is not None else None)
    groups = [[layer for layer in group if layer.name in matrices] for group in _shared_groups(layers, sharing, together)]
    batches = _batches([group for group in groups if group], spec.needs_hessians)
    for number, batch in enumerate(batches):
        started = time.perf_counter()
        originals = [[matrices[layer.name] for layer in group] for group in batch]
        leaders = [group[0].name for group in batch]
        found = [hessians.hessian(name) if hessians is not None and hessians.has(name) else None for name in leaders]
        with torch.inference_mode():
            results = quantize_groups(originals, spec, found, [group[0].name for group in batch])
        seconds = (time.perf_counter() - started) / sum(len(group) for group in batch)  # the batch's time, shared
        for group, group_originals, group_results in zip(batch, originals, results):
            for layer, original, (fake, grids, costs) in zip(group, group_originals, group_results):
                stored = stored_weight(fake, grids).stored_in(layer.module.weight.dtype)
                if stored.grids is not grids:  # half precision: the weight a checkpoint holds is what is simulated
                    fake, grids = stored.dequantize(), stored.grids
                done[layer.name] = LayerQuantization(original.float(), fake, grids, {**costs, "seconds": seconds})
        progress((number + 1) / len(batches), f"Quantized {', '.join(group[0].name for group in batch)}")
    return done


def plan_quantization(loaded: LoadedModel, spec: QuantSpec, stats: StatsReport | None = None,
                      hessians: HessianReport | None = None, progress: Progress = no_progress,
                      output_errors: bool = True, layers: list[LinearLayer] | None = None,
                      calibration: CalibrationSet | None = None) -> tuple[QuantizedModel, pd.DataFrame]:
    """Quantized weights and input grids for ``layers`` and one row per layer: weight_error
    (‖ΔW‖²/‖W‖²), output_error (relative output change on the calibration tokens, needs Hessians, or
    AWQ's own pass), gptq_loss and damping (GPTQ), clip (activation range), input_error (expected
    relative error of the quantized input over its histogram, per-tensor symmetric grids),
    smoothing_max (SmoothQuant's largest s for the layer's input), AWQ's ratio, largest s, its
    parent's relative output error at the identity and at the chosen scales, and the layer's RTN
    output error before AWQ, and seconds. ``output_errors`` off skips the one costly measure
    (comparisons need the weights only). ``layers``: the spec's ``quantizable_layers`` unless given.
    ``calibration``: the set AWQ searches its scales on. The weights are read under the model's lock,
    so another session's quantized evaluation on the same model never leaks into this plan."""
    layers = quantizable_layers(loaded.model, spec) if layers is None else layers
    if spec.needs_stats and stats is None:
        needs = "SmoothQuant" if spec.smoothing is not None else "Static activation quantization"
        raise CalibscopeError(f"{needs} needs activation statistics: collect them first.")
    observed = set(stats.summary["key"]) if stats is not None else set()
    sharing = None
    if spec.weights.format is NumberFormat.NVFP4 and hessians is None:  # which layers vLLM fuses (one global scale)
        with loaded.lock:
            sharing = input_sharing(loaded.model, layers, loaded.device)
    def arrays_of(name: str) -> dict[str, torch.Tensor] | None:
        return stats.arrays(name) if stats is not None and name in observed else None

    matrices = original_weights(loaded, layers)
    smoothing, awq = None, None
    if spec.smoothing is not None:
        smoothing = smooth(loaded, layers, matrices, arrays_of, spec.smoothing)
    elif spec.awq is not None:
        if calibration is None:
            raise CalibscopeError("AWQ searches its scales on the calibration set itself: build a set first.")
        awq = awq_scaling(loaded, calibration, spec, layers, scaled(progress, 0.0, 0.8))
        smoothing = awq.scaling
    if smoothing is not None:
        matrices, hessians = smoothing.matrices(matrices), smoothing.hessians(hessians)
    awq_rows = awq.layers.set_index("layer").to_dict("index") if awq is not None and len(awq.layers) else {}
    weights = (quantized_weights(layers, matrices, spec.weights, hessians, scaled(progress, 0.8 if awq else 0.0, 0.9), sharing)
               if spec.weights.enabled else {})
    plan, rows = QuantizedModel(), []
    if smoothing is not None:
        plan.floats, plan.column_scales, plan.row_scales = smoothing.parameters, smoothing.scales, smoothing.row_scales
    for layer in layers:
        started = time.perf_counter()
        row = {"layer": layer.name, "kind": layer.kind.value, "in_features": layer.in_features}
        if spec.smoothing is not None and layer.name in smoothing.scales:  # how far SmoothQuant moved this input's range
            row["smoothing_max"] = float(smoothing.scales[layer.name].max())
        awq_row = dict(awq_rows.get(layer.name, {}))
        awq_error = awq_row.pop("output_error_awq", None)
        if layer.name in weights:
            result = weights[layer.name]
            original, fake, _, costs = result
            plan.add(layer, fake, result.integers())
            delta = fake - original
            row.update(costs, weight_error=float(delta.pow(2).sum() / original.pow(2).sum().clamp(min=1e-30)))
            if output_errors and hessians is not None and hessians.has(layer.name):  # two GEMMs per layer: skippable
                row["output_error"] = output_error(delta, original, hessians.hessian(layer.name))
            elif awq_error is not None and not spec.needs_hessians:  # AWQ's pass measured the same RTN weights
                row["output_error"] = awq_error
        row.update(awq_row)
        if spec.activations.enabled and layer.kind.is_linear:
            arrays = arrays_of(layer.name) if smoothing is None else smoothing.arrays(layer.name, arrays_of(layer.name))
            inputs = spec.activations
            quantizer = input_quantizer(layer.name, arrays, inputs, stats.spec.percentiles if stats is not None else (),
                                        layer.module.weight.dtype, layer.in_features)
            plan.inputs[layer.name] = quantizer
            if quantizer.clip is not None:
                row["clip"] = quantizer.clip
            if arrays is not None and "tensor_counts" in arrays and inputs.granularity is Granularity.TENSOR and inputs.symmetric and inputs.format in (
                    NumberFormat.INT, NumberFormat.FP8):
                row["input_error"] = relative_error(arrays["tensor_counts"], row["clip"], inputs.bits, fmt=inputs.format)
        row["seconds"] = row.get("seconds", 0.0) + time.perf_counter() - started
        rows.append(row)
    progress(1.0, f"Quantized {len(layers)} layers")
    return plan, pd.DataFrame(rows)
