"""Quantization runs and comparisons as plain specs: what a headless config (``[[quantize]]``,
``[compare]``) asks for, what the dashboard's session repeats, and how each is carried out."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pandas as pd

from engine.errors import SpecError
from engine.experiments.compare import ComparisonSpec, compare
from engine.experiments.evaluations import HELD_OUT_LABELS, UPLOADED, EvaluationCache, held_out_name
from engine.models import LoadedModel
from engine.progress import Progress, no_progress
from engine.quant import PRESETS, ActivationSpec, EvaluationSet, QuantReport, QuantSpec, Sensitivity, WeightSpec
from engine.sampling import CalibrationSet
from engine.specs import choice
from engine.stats import StatsReport
from engine.stats.hessian_report import HessianReport


@dataclass(frozen=True)
class EvaluationSpec:
    """Held-out text to measure perplexity on: a builtin corpus's held-out 10% (``source``, its
    name; the dashboard's label is accepted too), or a ``file``."""

    source: str = next(iter(HELD_OUT_LABELS))
    length: int = 256
    windows: int = 8
    file: str | None = None

    def __post_init__(self) -> None:
        if self.file is None:
            name = held_out_name(self.source)
            if name is None:
                raise SpecError(f"evaluation source {self.source!r} is unknown; use one of {', '.join(HELD_OUT_LABELS)} "
                                "(the held-out 10% of that builtin corpus), or file = PATH.")
            object.__setattr__(self, "source", name)
        if self.length < 2 or self.windows < 1:
            raise SpecError("An evaluation needs windows of at least 2 tokens and at least one window.")

    def windows_for(self, loaded: LoadedModel, cache: EvaluationCache) -> EvaluationSet:
        return cache.windows(loaded, UPLOADED if self.file else HELD_OUT_LABELS[self.source], self.length, self.windows, self.file)


@dataclass(frozen=True)
class QuantRun:
    """``sequential``: GPTQ block by block on the calibration set, each block's Hessians from the
    quantized blocks before it (true sequential where the scheme says so), instead of every layer at
    once from the collected Hessians."""

    spec: QuantSpec
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    sensitivity: Sensitivity = Sensitivity.CHEAP
    sequential: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensitivity", choice(Sensitivity, self.sensitivity, "sensitivity"))
        if self.sequential and not self.spec.can_run_sequentially:
            raise SpecError(f"sequential is for GPTQ weights only, not {self.spec.label()}: leave it out for this scheme.")

    def run(self, loaded: LoadedModel, stats: StatsReport | None, hessians: HessianReport | None, cache: EvaluationCache,
            progress: Progress = no_progress, calibration: CalibrationSet | None = None) -> QuantReport:
        if self.sequential and calibration is None:
            raise SpecError("A sequential quantization runs on the calibration set: build one first.")
        if self.spec.needs_hessians and hessians is None and not self.sequential:
            raise SpecError(f"{self.spec.label()} needs Hessians: add a [hessians] section to the config (or sequential = true).")
        if self.spec.needs_stats and stats is None:
            raise SpecError(f"{self.spec.label()} needs activation statistics: add a [stats] section to the config.")
        report, _ = cache.evaluate(loaded, self.spec, self.evaluation.windows_for(loaded, cache), stats, hessians,
                                   self.sensitivity, progress, calibration if self.sequential else None)
        return report


@dataclass(frozen=True)
class ComparisonRun:
    spec: ComparisonSpec
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)

    def run(self, loaded: LoadedModel, corpus, corpus_label: str, cache: EvaluationCache,
            progress: Progress = no_progress) -> pd.DataFrame:
        evaluation = EvaluationSpec(self.evaluation.source, self.spec.length, self.evaluation.windows, self.evaluation.file)
        return compare(loaded, corpus, self.spec, [evaluation.windows_for(loaded, cache)], corpus_label, progress)


def quant_spec_from(values: dict) -> QuantSpec:
    """``{"scheme": preset name}`` or ``{"weights": {...}, "activations": {...}, "name_pattern": ...}``."""
    if "scheme" in values:
        if values["scheme"] not in PRESETS:
            raise SpecError(f"[quantize] scheme {values['scheme']!r} is unknown; use one of {', '.join(PRESETS)}.")
        return PRESETS[values["scheme"]]
    return QuantSpec(WeightSpec(**values.get("weights", {})), ActivationSpec(**values.get("activations", {})),
                     values.get("name_pattern", ""))


def quant_run_from(values: dict) -> QuantRun:
    values = dict(values)
    evaluation = EvaluationSpec(**values.pop("evaluation", {}))
    sensitivity = values.pop("sensitivity", Sensitivity.CHEAP)
    sequential = values.pop("sequential", False)
    if not isinstance(sequential, bool):
        raise SpecError(f"[quantize] sequential = {sequential!r}: use true or false.")
    return QuantRun(quant_spec_from(values), evaluation, sensitivity, sequential)


def comparison_run_from(values: dict) -> ComparisonRun:
    values = dict(values)
    evaluation = EvaluationSpec(**values.pop("evaluation", {}))
    return ComparisonRun(ComparisonSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}),
                         evaluation)


def as_json(run: QuantRun | ComparisonRun) -> dict:
    """A run as config data: every field spelled out (no preset names), enums as their labels."""
    data = dataclasses.asdict(run)
    return {**data.pop("spec"), **data}
