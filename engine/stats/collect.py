"""collect: activation statistics of every selected layer in one pass."""
from __future__ import annotations

import time

import torch

from engine import hooks
from engine.models import LinearLayer, LoadedModel
from engine.progress import Progress, no_progress
from engine.runner import FinishedBlock, MemoryPlan, PassRequest, plan_for, run_pass
from engine.sampling import CalibrationSet
from engine.stats.accumulators import ActivationAccumulator, accumulator_bytes
from engine.stats.report import StatsReport, build_report
from engine.stats.specs import StatsSpec


def select_layers(model, spec: StatsSpec) -> list[LinearLayer]:
    """The layers ``spec`` asks for, in execution order."""
    return hooks.select_layers(model, spec.layer_types, spec.name_pattern, spec.include_head)


class _ReadPerBlock:
    """after_block: each finished block's accumulators read into CPU arrays and freed at once, so a
    block-by-block pass holds one block's accumulators on the device."""

    def __init__(self, spec: StatsSpec) -> None:
        self.quantiles = torch.tensor(spec.percentiles, dtype=torch.float64, device="cpu") / 100.0
        self.channels: dict[str, dict[str, torch.Tensor]] = {}
        self.held = 0

    def __call__(self, block: FinishedBlock) -> None:
        for key in list(block.accumulators):
            accumulator = block.accumulators.pop(key)
            self.held += accumulator_bytes(accumulator)
            self.channels[key] = accumulator.result(self.quantiles)


def request_for(layers: list[LinearLayer], spec: StatsSpec, after_block=None) -> PassRequest:
    channel_bytes = ActivationAccumulator.bytes_per_channel(spec.channel_histograms)
    return PassRequest(
        layers, spec.sides, lambda channels, device: ActivationAccumulator(channels, spec.channel_histograms, device),
        state_bytes=lambda layer: layer.in_features * channel_bytes + ActivationAccumulator.FIXED_BYTES,
        batch_size=spec.batch_size, after_block=after_block, execution=spec.execution)


def memory_plan(loaded: LoadedModel, calibration: CalibrationSet, spec: StatsSpec) -> MemoryPlan:
    """The memory plan a collection with ``spec`` would follow (shown before it starts)."""
    return plan_for(loaded, calibration, request_for(select_layers(loaded.model, spec), spec))


def collect(loaded: LoadedModel, calibration: CalibrationSet, spec: StatsSpec = StatsSpec(),
            progress: Progress = no_progress) -> StatsReport:
    """Stream ``calibration`` through ``loaded.model`` once and return the statistics of every selected layer."""
    started = time.perf_counter()
    layers = select_layers(loaded.model, spec)
    finished = _ReadPerBlock(spec)
    result = run_pass(loaded, calibration, request_for(layers, spec, finished), progress)
    meta = {"accumulator_mb": round(finished.held / 2**20, 2), "seconds": time.perf_counter() - started,
            "plan": result.plan.as_dict()}
    return build_report(finished.channels, result.shared, layers, spec, calibration, loaded, meta)
