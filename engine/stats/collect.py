"""collect: activation statistics of every selected layer in one pass."""
from __future__ import annotations

import time

from engine import hooks
from engine.models import LinearLayer, LoadedModel
from engine.progress import Progress, no_progress
from engine.runner import calibration_pass
from engine.sampling import CalibrationSet
from engine.stats.accumulators import ActivationAccumulator
from engine.stats.report import StatsReport, build_report
from engine.stats.specs import StatsSpec


def select_layers(model, spec: StatsSpec) -> list[LinearLayer]:
    """The layers ``spec`` asks for, in execution order."""
    return hooks.select_layers(model, spec.layer_types, spec.name_pattern, spec.include_head)


def collect(loaded: LoadedModel, calibration: CalibrationSet, spec: StatsSpec = StatsSpec(),
            progress: Progress = no_progress) -> StatsReport:
    """Stream ``calibration`` through ``loaded.model`` once and return the statistics of every selected layer."""
    started = time.perf_counter()
    layers = select_layers(loaded.model, spec)
    result = calibration_pass(
        loaded, calibration, layers, spec.sides,
        factory=lambda channels, device: ActivationAccumulator(channels, spec.channel_histograms, device),
        batch_size=spec.batch_size, progress=progress,
    )
    return build_report(result.accumulators, result.shared, layers, spec, calibration, loaded,
                        seconds=time.perf_counter() - started)
