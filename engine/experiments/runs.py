"""Quantization runs and comparisons as plain specs: what a headless config (``[[quantize]]``,
``[compare]``) asks for, what the dashboard's session repeats, and how each is carried out."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from engine.errors import SpecError
from engine.experiments.compare import ComparisonSpec, compare
from engine.experiments.evaluations import HELD_OUT_LABELS, UPLOADED, EvaluationCache, held_out_name
from engine.export import (
    CheckpointDtype,
    CheckpointFormat,
    CheckpointSummary,
    CheckpointWriter,
    checkpoint_refusal,
    save_quantized,
)
from engine.models import LoadedModel
from engine.progress import Progress, no_progress
from engine.quant import (
    PRESETS,
    ActivationSpec,
    Calibrated,
    EvaluationSet,
    Quantization,
    QuantizedModel,
    QuantReport,
    QuantSpec,
    Sensitivity,
    WeightSpec,
    quantize,
)
from engine.specs import choice


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
            if self.source == UPLOADED:
                raise SpecError("Upload a held-out text file (.txt, .jsonl, .csv, .parquet), or choose a builtin held-out "
                                "part (in a run config: file = PATH).")
            name = held_out_name(self.source)
            if name is None:
                raise SpecError(f"evaluation source {self.source!r} is unknown; use one of {', '.join(HELD_OUT_LABELS)} "
                                "(the held-out 10% of that builtin corpus), or file = PATH.")
            object.__setattr__(self, "source", name)
        if self.length < 2 or self.windows < 1:
            raise SpecError("An evaluation needs windows of at least 2 tokens and at least one window.")

    def windows_for(self, loaded: LoadedModel, cache: EvaluationCache) -> EvaluationSet:
        return cache.windows(loaded, UPLOADED if self.file else HELD_OUT_LABELS[self.source], self.length, self.windows,
                             self.file)


@dataclass(frozen=True)
class QuantRun:
    """``sequential``: GPTQ block by block on the calibration set, each block's Hessians from the
    quantized blocks before it (true sequential where the scheme says so), instead of every layer at
    once from the collected Hessians. ``save``: the quantized model is also written as a checkpoint
    in ``save_format`` to this folder (a headless run puts it inside its output folder), its float
    parts in ``save_dtype`` (bfloat16 unless asked otherwise; ``model``: the model's own dtype)."""

    spec: QuantSpec
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    sensitivity: Sensitivity = Sensitivity.CHEAP
    sequential: bool = False
    save: str | None = None
    save_format: CheckpointFormat = CheckpointFormat.COMPRESSED_TENSORS
    save_dtype: CheckpointDtype = CheckpointDtype.BFLOAT16

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensitivity", choice(Sensitivity, self.sensitivity, "sensitivity"))
        object.__setattr__(self, "save_format", choice(CheckpointFormat, self.save_format, "save_format"))
        object.__setattr__(self, "save_dtype", choice(CheckpointDtype, self.save_dtype, "save_dtype"))
        _ = self.quantization  # a scheme that cannot run as asked is refused with the entry's words
        if self.save is not None:
            reason = checkpoint_refusal(self.spec, self.save_format, self.save_dtype)
            if reason:
                raise SpecError(f"save = {self.save!r}: {reason}")

    @property
    def quantization(self) -> Quantization:
        return Quantization(self.spec, self.sequential, self.sensitivity)

    def run(self, loaded: LoadedModel, calibrated: Calibrated, cache: EvaluationCache, progress: Progress = no_progress,
            on_plan: Callable[[QuantizedModel], None] | None = None) -> tuple[QuantReport, bool]:
        """The evaluated run and whether its report was reused from ``cache``; ``on_plan`` receives its
        quantized weights unless it was."""
        windows = self.evaluation.windows_for(loaded, cache)
        return cache.evaluate(loaded, self.quantization, calibrated, windows, progress, on_plan=on_plan)

    def plan(self, loaded: LoadedModel, calibrated: Calibrated,
             progress: Progress = no_progress) -> tuple[QuantizedModel, pd.DataFrame]:
        """The run's quantized weights made again from the same inputs (GPTQ and RTN are
        deterministic), with their per-layer table (its weight_error tells whether they are the same)."""
        return quantize(loaded, replace(self.quantization, sensitivity=Sensitivity.NONE), calibrated, progress)

    def write(self, loaded: LoadedModel, folder: Path, calibrated: Calibrated, plan: QuantizedModel | None = None,
              progress: Progress = no_progress, provenance: dict | None = None) -> CheckpointSummary:
        """The run's quantized model written to ``folder`` in ``save_format`` and ``save_dtype``: ``plan`` when given, else
        made again; a model read block by block is quantized (sequentially) and written one block at a
        time, never whole."""
        samples = calibrated.samples
        record = {"run": as_json(self), "calibration_sha256": samples.manifest.token_sha256 if samples else None,
                  **(provenance or {})}
        if plan is None and not loaded.resident and self.sequential:
            with CheckpointWriter(loaded, self.spec, folder, self.save_format, self.save_dtype, provenance=record) as writer:
                quantize(loaded, replace(self.quantization, sensitivity=Sensitivity.NONE), calibrated, progress, writer.add)
                return writer.finish()
        plan = plan if plan is not None else self.plan(loaded, calibrated, progress)[0]
        return save_quantized(loaded, plan, self.spec, folder, self.save_format, self.save_dtype, provenance=record)


@dataclass(frozen=True)
class ComparisonRun:
    spec: ComparisonSpec
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)

    def run(self, loaded: LoadedModel, corpus, corpus_label: str, cache: EvaluationCache,
            progress: Progress = no_progress) -> pd.DataFrame:
        evaluation = EvaluationSpec(self.evaluation.source, self.spec.length, self.evaluation.windows, self.evaluation.file)
        return compare(loaded, corpus, self.spec, [evaluation.windows_for(loaded, cache)], corpus_label, progress)


def quant_spec_from(values: dict) -> QuantSpec:
    """``{"scheme": preset name}`` (with ``"mixed"``: its widths mixed per layer group; ``"kv_cache"``:
    its KV cache quantized; ``"rotation"``: its inputs rotated) or ``{"weights": {...}, "activations": {...},
    "name_pattern": ..., "smoothing": SmoothQuant's alpha, "awq": {...}, "experts": {...}, "mixed": {...},
    "kv_cache": {...}, "rotation": {...}}`` (an AwqSpec's, an ExpertPolicy's, a MixedSpec's, a
    KVCacheSpec's and a RotationSpec's fields)."""
    if "scheme" in values:
        if values["scheme"] not in PRESETS:
            raise SpecError(f"[quantize] scheme {values['scheme']!r} is unknown; use one of {', '.join(PRESETS)}.")
        added = {key: values[key] for key in ("mixed", "kv_cache", "rotation") if values.get(key) is not None}
        return replace(PRESETS[values["scheme"]], **added)  # the preset, its widths mixed, its cache quantized, rotated
    return QuantSpec(WeightSpec(**values.get("weights", {})), ActivationSpec(**values.get("activations", {})),
                     values.get("name_pattern", ""), values.get("smoothing"), values.get("awq"), values.get("experts", {}),
                     values.get("mixed"), values.get("kv_cache"), values.get("rotation"))


def quant_run_from(values: dict) -> QuantRun:
    values = dict(values)
    evaluation = EvaluationSpec(**values.pop("evaluation", {}))
    sensitivity = values.pop("sensitivity", Sensitivity.CHEAP)
    sequential = values.pop("sequential", False)
    if not isinstance(sequential, bool):
        raise SpecError(f"[quantize] sequential = {sequential!r}: use true or false.")
    save, save_format = values.pop("save", None), values.pop("save_format", CheckpointFormat.COMPRESSED_TENSORS)
    save_dtype = values.pop("save_dtype", CheckpointDtype.BFLOAT16)
    if save is not None and (not isinstance(save, str) or not save.strip() or Path(save).name != save):
        raise SpecError(f"[quantize] save = {save!r}: give a folder name (it is written inside the output folder).")
    return QuantRun(quant_spec_from(values), evaluation, sensitivity, sequential, save, save_format, save_dtype)


def comparison_run_from(values: dict) -> ComparisonRun:
    values = dict(values)
    evaluation = EvaluationSpec(**values.pop("evaluation", {}))
    return ComparisonRun(ComparisonSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}),
                         evaluation)


def as_json(run: QuantRun | ComparisonRun) -> dict:
    """A run as config data: every field spelled out (no preset names), enums as their labels,
    unset optional fields left out (TOML has no null)."""
    data = dataclasses.asdict(run)
    spec = {k: v for k, v in data.pop("spec").items() if v is not None}
    return json.loads(json.dumps({**spec, **{k: v for k, v in data.items() if v is not None}}))
