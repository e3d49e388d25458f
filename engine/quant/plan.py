"""From a QuantSpec and the calibration results (statistics, Hessians) to the weights and input
grids to swap in, with what each layer's quantization costs on the calibration data."""
from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from engine import guard
from engine.errors import CalibscopeError
from engine.hooks import cached_attention, input_sharing, select_layers
from engine.models import LAYER_KINDS, ExpertsLayer, LinearLayer, LoadedModel, find_experts
from engine.progress import Progress, no_progress, scaled
from engine.quant.activations.inputs import input_quantizer
from engine.quant.activations.kv_cache import kv_cache_scales, kv_cache_table
from engine.quant.activations.ranges import relative_error
from engine.quant.apply import QuantizedModel, module_weight, original_weights, quantized
from engine.quant.formats.floats import FloatGrids, FloatWeight, NumberFormat
from engine.quant.formats.grid import GroupGrids, IntWeight
from engine.quant.measures import output_error
from engine.quant.methods.awq_pass import awq_scaling
from engine.quant.methods.experts import expert_hessians, quantize_experts
from engine.quant.methods.fused_rotation import calibrated_again, fuse_rotations, turned_stats_spec
from engine.quant.methods.matrices import GPTQ_BATCH_BYTES, quantize_groups, stored_weight
from engine.quant.methods.mixed import allocate, bits_per_weight, group_divergences, layer_groups, measured_losses
from engine.quant.methods.rotation import probe_batch, range_changes, rotate
from engine.quant.methods.smoothing import smooth
from engine.quant.request import Calibrated
from engine.quant.specs import Allocation, Granularity, KVCacheSpec, QuantSpec, WeightSpec
from engine.runner import model_device
from engine.sampling import CalibrationSet
from engine.stats import ExpertReport, ExpertSpec, HessianReport, collect, collect_expert_stats, collect_kv


def quantizable_layers(model: torch.nn.Module, spec: QuantSpec) -> list[LinearLayer]:
    """Every layer type the engine handles whose name matches the spec, the LM head and MoE routers
    excluded (the peers keep both in float); none when the spec quantizes only the KV cache."""
    if not spec.weights.enabled and not spec.activations.enabled:
        return []
    routers = {layer.router for layer in find_experts(model)}
    return [layer for layer in select_layers(model, LAYER_KINDS, spec.name_pattern, False) if layer.name not in routers]


def quantizable_experts(model: torch.nn.Module, spec: QuantSpec) -> list[ExpertsLayer]:
    """The MoE experts modules whose name matches the spec."""
    pattern = re.compile(spec.name_pattern) if spec.name_pattern else None
    return [layer for layer in find_experts(model) if pattern is None or pattern.search(layer.name)]


def _shared_groups(layers: list[LinearLayer], sharing: dict[str, str] | None, together: bool) -> list[list[LinearLayer]]:
    """Layers that read the same input (``sharing``: name -> the first of them) together when
    ``together`` (GPTQ: one Hessian; NVFP4: one global scale), else one by one."""
    if not together or sharing is None:
        return [[layer] for layer in layers]
    groups: dict[str, list[LinearLayer]] = {}
    for layer in layers:
        groups.setdefault(sharing.get(layer.name, layer.name), []).append(layer)
    return list(groups.values())


class LayerQuantization(NamedTuple):
    original: torch.Tensor  # the layer's float32 [out, in] weight
    fake: torch.Tensor
    grids: GroupGrids | FloatGrids
    costs: dict  # with the layer's share of the batch's seconds

    def integers(self) -> IntWeight | FloatWeight:
        return stored_weight(self.fake, self.grids)


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


PLAN_COPIES = 3


def plan_quantization(loaded: LoadedModel, spec: QuantSpec, calibrated: Calibrated, progress: Progress = no_progress,
                      output_errors: bool = True, turned: frozenset[str] = frozenset()) -> tuple[QuantizedModel, pd.DataFrame]:
    """Quantized weights and input grids for ``layers`` and one row per layer: weight_error
    (‖ΔW‖²/‖W‖²), output_error (relative output change on the calibration tokens, needs Hessians, or
    AWQ's own pass), gptq_loss and damping (GPTQ), clip (activation range), input_error (expected
    relative error of the quantized input over its histogram, per-tensor symmetric grids),
    smoothing_max (SmoothQuant's largest s for the layer's input), AWQ's ratio, largest s, its
    parent's relative output error at the identity and at the chosen scales, and the layer's RTN
    output error before AWQ, and seconds. ``output_errors`` off skips the one costly measure
    (comparisons need the weights only). ``calibrated.samples``: the set AWQ searches its scales on,
    and MoE experts' GPTQ collects their Hessians on when ``calibrated.experts`` (an expert report with
    its Hessians kept) is not given; MoE experts get one row per expert and part
    (engine/quant/methods/experts.py). The weights are read under the model's lock, so another session's
    quantized evaluation on the same model never leaks into this plan. What the scheme needs was
    checked by the entry (``engine.quant.quantize``), the one caller. Fused rotations (SpinQuant's R1,
    R2) turn the float model first, and the rest of the scheme is planned on it (``_fused_plan``);
    ``turned``: the layers whose input they turned, which the inputs' online rotation leaves alone."""
    if spec.rotation is not None and spec.rotation.fused:
        return _fused_plan(loaded, spec, calibrated, progress, output_errors)
    stats, hessians, calibration = calibrated.stats, calibrated.hessians, calibrated.samples
    layers = quantizable_layers(loaded.model, spec)
    # the plan holds float32 copies of every weight it quantizes (the original, the rounded one, its
    # codes), and GPTQ works on batches of weights and Hessians of up to GPTQ_BATCH_BYTES at a time
    working = PLAN_COPIES * 4 * sum(layer.module.weight.numel() for layer in layers) + \
        (2 * GPTQ_BATCH_BYTES if spec.needs_hessians else 0)
    with guard.current().reserve_memory(f"Quantizing {len(layers)} layers ({spec.label()})", working):
        observed = set(stats.summary["key"]) if stats is not None else set()
        sharing = None
        if spec.weights.format is NumberFormat.NVFP4 and hessians is None:  # which layers vLLM fuses (one global scale)
            with loaded.lock:
                sharing = input_sharing(loaded.model, layers, loaded.device)
        def arrays_of(name: str) -> dict[str, torch.Tensor] | None:
            return stats.arrays(name) if stats is not None and name in observed else None

        matrices = original_weights(loaded, layers)
        percentiles = stats.spec.percentiles if stats is not None else ()
        rotated, rotation_rows = None, {}
        online = [layer for layer in layers if layer.name not in turned]
        if spec.rotation is not None and online:
            with loaded.lock:  # every layer's (Hessians may cover some): vLLM fuses them, one rotation per input
                groups = sharing if sharing is not None else input_sharing(loaded.model, layers, loaded.device)
            rotated = rotate(loaded, online, matrices, spec, calibration, stats, groups, scaled(progress, 0.0, 0.4))
            matrices, hessians = rotated.rotations.weights(matrices), rotated.rotations.hessians(hessians)
            arrays_of, percentiles = rotated.arrays, rotated.after.spec.percentiles
            rotation_rows = rotated.table.set_index("layer").to_dict("index")
        smoothing, awq = None, None
        if spec.smoothing is not None:
            smoothing = smooth(loaded, layers, matrices, arrays_of, spec.smoothing)
        elif spec.awq is not None:
            awq = awq_scaling(loaded, calibration, spec, layers, scaled(progress, 0.0, 0.8))
            smoothing = awq.scaling
        if smoothing is not None:
            matrices, hessians = smoothing.matrices(matrices), smoothing.hessians(hessians)
        awq_rows = awq.layers.set_index("layer").to_dict("index") if awq is not None and len(awq.layers) else {}
        widths: dict[str, int] = {}
        if spec.mixed is not None:
            weights, widths = _mixed_weights(loaded, layers, matrices, spec, calibrated, scaled(progress, 0.0, 0.9))
        elif spec.weights.enabled:
            weights = quantized_weights(layers, matrices, spec.weights, hessians,
                                        scaled(progress, 0.8 if awq else 0.4 if rotated else 0.0, 0.9), sharing)
        else:
            weights = {}
        plan, rows = QuantizedModel(), []
        if smoothing is not None:
            plan.floats, plan.column_scales, plan.row_scales = smoothing.parameters, smoothing.scales, smoothing.row_scales
        if rotated is not None:
            plan.rotations = rotated.rotations.online
        for layer in layers:
            started = time.perf_counter()
            row = {"layer": layer.name, "kind": layer.kind.value, "in_features": layer.in_features}
            if layer.name in widths:
                shape = (layer.out_features, layer.in_features)
                row.update(bits=widths[layer.name], weights=shape[0] * shape[1],
                           bits_per_weight=bits_per_weight(spec.weights, widths[layer.name], shape))
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
            row.update(rotation_rows.get(layer.name, {}))
            if layer.name not in weights and rotated is not None and layer.name in plan.rotations:
                plan.weights[layer.name] = module_weight(layer, matrices[layer.name])  # float, rotated with its input
            if spec.activations.enabled and layer.kind.is_linear:
                arrays = arrays_of(layer.name) if smoothing is None else smoothing.arrays(layer.name, arrays_of(layer.name))
                inputs = spec.activations
                quantizer = input_quantizer(layer.name, arrays, inputs, percentiles, layer.module.weight.dtype,
                                            layer.in_features)
                plan.inputs[layer.name] = quantizer
                if quantizer.clip is not None:
                    row["clip"] = quantizer.clip
                per_tensor = inputs.granularity is Granularity.TENSOR and inputs.symmetric
                if arrays is not None and "tensor_counts" in arrays and per_tensor and inputs.format in (NumberFormat.INT,
                                                                                                       NumberFormat.FP8):
                    row["input_error"] = relative_error(arrays["tensor_counts"], row["clip"], inputs.bits, fmt=inputs.format)
            row["seconds"] = row.get("seconds", 0.0) + time.perf_counter() - started
            rows.append(row)
        if spec.weights.enabled:
            rows.extend(_quantized_experts(loaded, spec, plan, calibrated.experts, calibration))
        if spec.kv_cache is not None:
            plan.kv_cache, kv_rows = _kv_cache(loaded, spec.kv_cache, calibrated, scaled(progress, 0.9, 1.0))
            rows.extend(kv_rows)
        progress(1.0, f"Quantized {len(layers)} layers")
        return plan, pd.DataFrame(rows)


def _fused_plan(loaded: LoadedModel, spec: QuantSpec, calibrated: Calibrated, progress: Progress,
                output_errors: bool) -> tuple[QuantizedModel, pd.DataFrame]:
    """The model turned by the fused rotations (engine/quant/methods/fused_rotation.py), what was
    collected collected again on it, and the scheme (with the inputs' online rotation, if any) planned
    on it; the plan keeps the turned floats it did not quantize."""
    fused = fuse_rotations(loaded, spec.rotation, scaled(progress, 0.0, 0.05),
                           probe_batch(calibrated.samples, model_device(loaded.model)))
    inner, layers = replace(spec, rotation=spec.rotation.online()), quantizable_layers(loaded.model, spec)
    before = calibrated.stats
    stale = before is None or before.meta.get("calibration_sha256") != calibrated.samples.manifest.token_sha256
    if inner.rotation is None and stale:  # the view: each input on the model as loaded and turned
        before = collect(loaded, calibrated.samples, turned_stats_spec(calibrated, inner), progress=scaled(progress, 0.05, 0.2))
    turned = frozenset(fused.turned_inputs(inner.rotation, {layer.name: layer.in_features for layer in layers}))
    with quantized(loaded, fused.plan()):
        again = calibrated_again(loaded, calibrated, inner, spec.rotation, output_errors, scaled(progress, 0.2, 0.4))
        plan, table = plan_quantization(loaded, inner, again, scaled(progress, 0.4, 1.0), output_errors, turned)
    if inner.rotation is None:  # an online rotation shows its own before and after
        table = table.merge(range_changes(layers, before, again.stats), on="layer", how="left")
    table["input_turned"] = table["layer"].isin(fused.inputs)  # by R1 or R2
    table.attrs["fused_rotation"] = fused.sentence()
    return fused.merged(plan), table


def _mixed_weights(loaded: LoadedModel, layers: list[LinearLayer], matrices: dict[str, torch.Tensor], spec: QuantSpec,
                   calibrated: Calibrated, progress: Progress) -> tuple[dict[str, LayerQuantization], dict[str, int]]:
    """Mixed precision (engine/quant/methods/mixed.py): each layer group's width chosen within the
    budget, then every layer quantized at its group's width; the layers' quantization and widths.
    A measured allocation quantizes every layer at every width first (its output errors), narrowest
    last, whose weights are kept: the divergence allocation measures each group alone with them, and
    the groups that take the narrowest width keep them."""
    mixed, hessians = spec.mixed, calibrated.hessians
    present = [layer for layer in layers if layer.name in matrices]
    if hessians is not None:
        sharing = hessians.shared_with
    else:
        with loaded.lock:
            sharing = input_sharing(loaded.model, present, loaded.device)
    groups = layer_groups(present, sharing)
    widths = mixed.bits
    narrowest: dict[str, LayerQuantization] = {}
    losses = None
    if mixed.allocation.measured:
        missing = next((layer.name for layer in present if hessians is None or not hessians.has(layer.name)), None)
        if missing is not None:
            raise CalibscopeError(f"Mixed precision measures each layer's output error on the calibration set's Hessians, and "
                                  f"{missing} has none: collect Hessians of every layer you quantize.")
        errors = np.zeros((len(groups), len(widths)))
        for step, index in enumerate(reversed(range(len(widths)))):
            done = quantized_weights(present, matrices, replace(spec.weights, bits=widths[index]), hessians,
                                     scaled(progress, 0.6 * step / len(widths), 0.6 * (step + 1) / len(widths)), sharing)
            errors[:, index] = [sum(output_error(done[name].fake - done[name].original, done[name].original,
                                                 hessians.hessian(name)) for name in group.names) for group in groups]
            narrowest = done
        alone = (group_divergences(loaded, {layer.name: layer for layer in present}, groups,
                                   {name: result.fake for name, result in narrowest.items()}, calibrated.samples,
                                   scaled(progress, 0.6, 0.8))
                 if mixed.allocation is Allocation.DIVERGENCE else None)
        losses = measured_losses(errors, mixed, alone)
    chosen = allocate(groups, spec.weights, mixed, losses)
    width_of = {name: widths[choice] for group, choice in zip(groups, chosen) for name in group.names}
    weights = {name: narrowest[name] for name in width_of if name in narrowest and width_of[name] == widths[0]}
    for bits in widths:
        wanted = [layer for layer in present if width_of[layer.name] == bits and layer.name not in weights]
        if wanted:
            weights.update(quantized_weights(wanted, matrices, replace(spec.weights, bits=bits), hessians, sharing=sharing))
    progress(1.0, f"Mixed precision: {len(groups)} layer groups at {', '.join(map(str, widths))} bits")
    return weights, width_of


def _kv_cache(loaded: LoadedModel, spec: KVCacheSpec, calibrated: Calibrated,
              progress: Progress) -> tuple[dict, list[dict]]:
    """The FP8 KV cache's scales of every attention layer, from the float model's keys and values on
    the calibration set (as llm-compressor calibrates them: quantization off; ``calibrated.kv_cache``
    when they were collected on this set, else collected here), and a row per layer
    and tensor: the range its scale covers (the widest head's), the |max| seen and the expected
    relative error of the cache's rounding (mean over heads)."""
    modules = cached_attention(loaded.model)
    if not modules:
        raise CalibscopeError(f"{loaded.info.name} has no attention module with a KV cache that calibscope can find (an "
                              "*Attention module with key and value projections and a cache argument): leave the KV cache "
                              "float for this model.")
    started, report = time.perf_counter(), None
    if spec.calibrated:
        report = calibrated.kv_cache
        if report is None or report.meta.get("calibration_sha256") != calibrated.samples.manifest.token_sha256:
            report = collect_kv(loaded, calibrated.samples, progress=progress)
    config = loaded.model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads  # as compressed-tensors reads it
    dtype = next(next(iter(modules.values())).parameters()).dtype
    scales = kv_cache_scales(report, spec, dtype, list(modules), heads)
    table = kv_cache_table(report, scales)
    rows = []
    for (name, tensor), per_head in table.groupby(["layer", "tensor"], sort=False):
        row = {"layer": f"{name} {tensor}s", "kind": "kv cache", "heads": len(per_head), "clip": float(per_head["range"].max())}
        if "error" in per_head:  # the heads' mean, unweighted: each head holds as many values
            row.update(absmax=float(per_head["absmax"].max()), kv_error=float(per_head["error"].mean()))
        rows.append(row)
    seconds = (time.perf_counter() - started) / len(rows)  # the pass and the scales, shared
    return scales, [{**row, "seconds": seconds} for row in rows]


_NOT_EXPERTS = r"^(?!.*\.experts)"


def _quantized_experts(loaded: LoadedModel, spec: QuantSpec, plan: QuantizedModel, report: ExpertReport | None,
                       calibration: CalibrationSet | None) -> list[dict]:
    """Every MoE experts module the spec selects, quantized into ``plan``; their rows. AWQ and
    SmoothQuant leave the experts' inputs as they are (a norm read by a router is never rescaled)."""
    modules = quantizable_experts(loaded.model, spec)
    if not modules:
        return []
    if spec.activations.enabled:
        raise CalibscopeError("Input quantization of MoE experts is not simulated yet (only their weights): leave the "
                              f"experts out with a name pattern (e.g. {_NOT_EXPERTS!r}) or quantize the weights only.")
    needs = spec.weights.needs_hessians or spec.experts.needs_all_tokens
    if needs and (report is None or (spec.experts.needs_all_tokens and not report.meta.get("all_tokens"))):
        if calibration is None:
            raise CalibscopeError("The MoE experts' GPTQ needs each expert's Hessians: collect expert statistics with their "
                                  "Hessians kept, or give the calibration set to collect them on.")
        report = collect_expert_stats(loaded, calibration, ExpertSpec(keep_hessians=True,
                                                                      all_tokens=spec.experts.needs_all_tokens))
    rows = []
    for layer in modules:
        with loaded.lock:  # the float originals, as for every weight (see original_weights)
            weights = layer.matrices()
        started = time.perf_counter()
        hessians = expert_hessians(layer, report, spec.experts, spec.weights.needs_hessians)
        done = quantize_experts(layer, weights, spec.weights, hessians)
        plan.add_experts(layer, done)
        seconds = (time.perf_counter() - started) / max(len(done.rows), 1)
        rows.extend({**row, "seconds": seconds} for row in done.rows)
    return rows
