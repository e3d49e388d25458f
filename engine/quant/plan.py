"""From a QuantSpec and the calibration results (statistics, Hessians) to the weights and input
grids to swap in, with what each layer's quantization costs on the calibration data."""
from __future__ import annotations

import time

import pandas as pd
import torch

from engine.errors import CalibscopeError
from engine.hooks import select_layers
from engine.models import LinearLayer
from engine.models.layers import LAYER_KINDS
from engine.progress import Progress, no_progress
from engine.quant.apply import QuantizedModel, module_weight, weight_matrix
from engine.quant.gptq import gptq
from engine.quant.ranges import activation_grid, relative_error
from engine.quant.rtn import rtn
from engine.quant.specs import Granularity, QuantSpec, WeightSpec
from engine.stats import StatsReport
from engine.stats.hessian_report import HessianReport


def quantizable_layers(model: torch.nn.Module, spec: QuantSpec) -> list[LinearLayer]:
    """Every layer type the engine handles whose name matches the spec, the LM head excluded."""
    return select_layers(model, LAYER_KINDS, spec.name_pattern, False)


def output_error(delta: torch.Tensor, weight: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative change of the layer's output on the calibration tokens:
    Σ‖ΔW x‖² / Σ‖W x‖² = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) for H ∝ Σ xxᵀ (the scale cancels)."""
    hessian = hessian.to(weight.device, torch.float32)
    change = torch.sum((delta @ hessian) * delta)
    signal = torch.sum((weight @ hessian) * weight)
    return float(change / signal) if signal > 0 else float("nan")


def quantize_weight(matrix: torch.Tensor, spec: WeightSpec, hessian: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """One layer's fake-quantized [out, in] weight and its costs."""
    if spec.needs_hessians:
        if hessian is None:
            raise CalibscopeError("GPTQ needs the Hessians of these layers: collect Hessians first (or use RTN).")
        result = gptq(matrix, hessian, spec.bits, spec.group_size, spec.symmetric, spec.block_size, spec.damping,
                      spec.act_order)
        return result.weight, {"gptq_loss": result.loss, "damping": result.damping}
    return rtn(matrix, spec.bits, spec.group_size, spec.symmetric), {}


def plan_quantization(layers: list[LinearLayer], spec: QuantSpec, stats: StatsReport | None = None,
                      hessians: HessianReport | None = None,
                      progress: Progress = no_progress) -> tuple[QuantizedModel, pd.DataFrame]:
    """Quantized weights and input grids for ``layers`` and one row per layer: weight_error
    (‖ΔW‖²/‖W‖²), output_error (relative output change on the calibration tokens, needs Hessians),
    gptq_loss and damping (GPTQ), clip (activation range), input_error (expected relative error of the
    quantized input over its histogram, per-tensor symmetric grids) and seconds."""
    if spec.activations.enabled and stats is None:
        raise CalibscopeError("Static activation quantization needs activation statistics: collect them first.")
    available = set(hessians.diagnostics["layer"]) if hessians is not None else set()
    observed = set(stats.summary["key"]) if stats is not None else set()
    plan, rows = QuantizedModel(), []
    for number, layer in enumerate(layers):
        started = time.perf_counter()
        row = {"layer": layer.name, "kind": layer.kind, "in_features": layer.in_features}
        matrix = weight_matrix(layer)
        if spec.weights.enabled and matrix is not None:
            hessian = hessians.hessian(layer.name) if layer.name in available else None
            original = matrix.float()
            fake, costs = quantize_weight(original, spec.weights, hessian)
            plan.weights[layer.name] = module_weight(layer, fake)
            delta = fake - original
            row.update(costs, weight_error=float(delta.pow(2).sum() / original.pow(2).sum().clamp(min=1e-30)))
            if hessian is not None:
                row["output_error"] = output_error(delta, original, hessian)
        if spec.activations.enabled and layer.kind.is_linear:
            if layer.name not in observed:
                raise CalibscopeError(f"No activation statistics for {layer.name}: collect statistics of layer inputs "
                                      "for every layer you quantize.")
            arrays = stats.arrays(layer.name)
            grid = activation_grid(arrays, spec.activations, stats.spec.percentiles)
            plan.inputs[layer.name] = grid
            row["clip"] = float((grid.scale * (grid.maxq - grid.zero)).max())
            if spec.activations.granularity is Granularity.TENSOR and spec.activations.symmetric:
                row["input_error"] = relative_error(arrays["tensor_counts"], row["clip"], spec.activations.bits)
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        progress((number + 1) / len(layers), f"Quantized {layer.name}")
    return plan, pd.DataFrame(rows)
