"""GPTQ block by block: each block's Hessians accumulated, its weights quantized (stacked per shared
input) and the Hessians freed before the next block, so at most one block's Hessians exist at once.

propagate=True is sequential GPTQ (llm-compressor's sequential pipeline, GPTQModel's default): the
block is run again with its quantized weights, so each block's Hessians come from the outputs of the
blocks before it as already quantized; with ``WeightSpec.true_sequential`` each group of layers
reading one input also sees the block's earlier groups quantized (GPTQModel's default).
propagate=False gives the one-pass result (every Hessian from the float model), the same as
collecting every Hessian and then quantizing, without holding them all. The model's own weights are
never changed: the result is a plan of quantized weights, evaluated like any other.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pandas as pd
import torch

from engine.errors import CalibscopeError
from engine.models import LoadedModel
from engine.progress import Progress, no_progress
from engine.quant.apply import QuantizedModel, original_weights
from engine.quant.measures import output_error
from engine.quant.methods.experts import expert_hessians, quantize_experts
from engine.quant.plan import quantizable_experts, quantizable_layers, quantized_weights
from engine.quant.request import Quantization
from engine.quant.specs import ExpertCalibration, QuantSpec
from engine.runner import Execution, FinishedBlock, run_pass
from engine.sampling import CalibrationSet
from engine.stats import ExpertAccumulator, ExpertSpec, finished_expert_report, hessian_request


class _BlockHessians:
    """The HessianReport view GPTQ reads, over one finished block."""

    def __init__(self, block: FinishedBlock) -> None:
        self.shared_with = block.shared
        self.hessians = {key: block.accumulators.pop(key).take() for key in list(block.accumulators)}

    def has(self, layer: str) -> bool:
        return self.shared_with.get(layer, layer) in self.hessians

    def hessian(self, layer: str) -> torch.Tensor:
        return self.hessians[self.shared_with.get(layer, layer)]


def _quantized_experts(block: FinishedBlock, finishing: ExpertSpec, spec: QuantSpec, rows: list[dict],
                       loaded: LoadedModel, into: QuantizedModel) -> None:
    """The finished block's experts modules quantized on the Hessians its pass gathered (then freed)
    into ``into`` (fake fused weights by parameter name, each expert's integers); their rows appended
    to ``rows``."""
    found = [block.accumulators.pop(key) for key in list(block.accumulators)
             if isinstance(block.accumulators[key], ExpertAccumulator)]
    if not found:
        return
    report = finished_expert_report(found, finishing)
    for accumulator in found:
        layer = accumulator.layer
        with loaded.lock:
            originals = layer.matrices()
        done = quantize_experts(layer, originals, spec.weights, expert_hessians(layer, report, spec.experts, True))
        into.add_experts(layer, done)
        rows.extend(done.rows)


def gptq_block_by_block(loaded: LoadedModel, calibration: CalibrationSet, quantization: Quantization,
                        sink: Callable[[QuantizedModel], None] | None = None,
                        progress: Progress = no_progress) -> tuple[QuantizedModel, pd.DataFrame]:
    """The quantized weights of every block's layers and one row per layer (weight_error,
    output_error on the inputs it saw, gptq_loss, damping, hessian_trace, seconds), as
    ``plan_quantization`` (without a sensitivity, its one costly measure is skipped, as there).
    ``sink``: each block's quantized layers are handed to it (e.g. ``CheckpointWriter.add``) as
    soon as the block is done and not kept, so a model of any size is quantized and written in the
    memory of one block; the plan then holds none. MoE experts are quantized with their block, on the
    Hessians the same pass gathers for them (their policy as in ``plan_quantization``). Reached
    through ``engine.quant.quantize``, which checked the scheme runs sequentially."""
    spec, hessians, propagate = quantization.spec, quantization.hessians, quantization.propagate
    output_errors = quantization.output_errors
    experts = quantizable_experts(loaded.model, spec)
    if experts and spec.weights.true_sequential and propagate:
        raise CalibscopeError("True sequential GPTQ does not take MoE experts yet: use a sequential scheme without it "
                              "(W4 g128 GPTQ), or leave the experts out with a name pattern.")
    layers = {layer.name: layer for layer in quantizable_layers(loaded.model, spec)}
    plan, rows = QuantizedModel(), []
    finishing = ExpertSpec(keep_hessians=True, all_tokens=spec.experts.needs_all_tokens, diagnostics=False)

    def quantize_block(block: FinishedBlock) -> dict[str, torch.Tensor]:
        block_plan = QuantizedModel()
        _quantized_experts(block, finishing, spec, rows, loaded, block_plan)  # their accumulators popped first
        view = _BlockHessians(block)
        mine = [layers[name] for name in layers if view.has(name)]
        done = quantized_weights(mine, original_weights(loaded, mine), spec.weights, view)
        for layer in mine:
            result = done[layer.name]
            original, fake, _, costs = result
            block_plan.add(layer, fake, result.integers())
            delta = fake - original
            row = {"layer": layer.name, "kind": layer.kind.value, "in_features": layer.in_features, **costs,
                   "weight_error": float(delta.pow(2).sum() / original.pow(2).sum().clamp(min=1e-30))}
            if output_errors:
                row["output_error"] = output_error(delta, original, view.hessian(layer.name))
            rows.append(row)
        if sink is not None and (mine or block_plan.experts):
            sink(block_plan)
        else:
            plan.weights.update(block_plan.weights)
            plan.integers.update(block_plan.integers)
            plan.experts.update(block_plan.experts)
            plan.expert_integers.update(block_plan.expert_integers)
        return {**block_plan.weights, **block_plan.experts}

    request = hessian_request(list(layers.values()), hessians, after_block=quantize_block)
    if experts:  # each expert's Hessians from the same pass, its block quantized with its layers
        request = replace(request, experts=tuple(experts), experts_factory=lambda layer, device: ExpertAccumulator(
            layer, len(calibration), device, hessians=True, all_tokens=spec.experts.needs_all_tokens,
            routed_hessians=spec.experts.calibration is not ExpertCalibration.ALL))
    started = time.perf_counter()
    true_sequential = spec.weights.true_sequential and propagate
    run_pass(loaded, calibration, replace(request, propagate=propagate, execution=Execution.BLOCKWISE,
                                          true_sequential=true_sequential), progress)
    table = pd.DataFrame(rows)
    table.attrs["seconds"] = time.perf_counter() - started
    return plan, table
