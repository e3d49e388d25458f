"""Held-out text for evaluations, and a bounded cache of what evaluating on it costs.

Evaluation windows depend only on (model, text, length, count); the float model's reference (its
perplexity and final hidden states) only on (model, windows); a quantized evaluation on (model,
calibration set, what was collected from it, scheme, windows). All are deterministic in their key,
so one cache instance can serve every session of a process (the dashboard keeps one in its
application context; nothing here is a module global).
"""
from __future__ import annotations

from collections.abc import Callable

from engine.corpus import column, load_corpus
from engine.errors import CalibscopeError
from engine.experiments.cache import ResultCache
from engine.memo import OwnerMemo
from engine.models import LoadedModel
from engine.progress import Progress, no_progress
from engine.quant import (
    Calibrated,
    EvaluationSet,
    FloatReference,
    Quantization,
    QuantizedModel,
    QuantReport,
    evaluate,
    evaluation_windows,
    float_reference,
)
from engine.specs import BuiltinCorpus, CorpusSpec

UPLOADED = "Uploaded file"
HELD_OUT = {f"{corpus.value} (held-out 10%)": corpus.value for corpus in BuiltinCorpus}
HELD_OUT_LABELS = {name: label for label, name in HELD_OUT.items()}  # corpus name -> the dashboard's label


def held_out_name(source: str) -> str | None:
    """The builtin corpus a held-out source names, given as the corpus ('python-docs', what configs
    write) or as the dashboard's label ('python-docs (held-out 10%)'); None for anything else."""
    return source if source in HELD_OUT_LABELS else HELD_OUT.get(source)


def held_out_texts(source: str, upload: str | None = None) -> list[str]:
    """The documents of a held-out source: a builtin corpus's held-out 10%, or an uploaded file."""
    if source == UPLOADED:
        if not upload:
            raise CalibscopeError("Upload a held-out text file (.txt, .jsonl, .csv, .parquet), "
                                  "or choose a builtin held-out part.")
        return column(load_corpus(CorpusSpec.file(upload)), "text")
    if source not in HELD_OUT:
        raise CalibscopeError(f"Unknown evaluation text {source!r}; choose one of {', '.join([*HELD_OUT, UPLOADED])}.")
    return column(load_corpus(CorpusSpec.builtin(HELD_OUT[source], split="test")), "text")


class EvaluationCache:
    """Bounded caches of evaluation windows, float references and quantized evaluations. A reference
    holds hidden-size numbers per evaluated token (5 MB for the builtin Gemma's 4 x 512 windows) and
    the model's LM head (no copy): references are kept per model object, and go with it."""

    def __init__(self, windows: int = 8, references: int = 8, reports: int = 32) -> None:
        self._windows = ResultCache(windows)
        self._floats: OwnerMemo[FloatReference] = OwnerMemo(references)
        self._reports = ResultCache(reports)

    def windows(self, loaded: LoadedModel, source: str, length: int, count: int, upload: str | None = None) -> EvaluationSet:
        key = (loaded.spec, source, upload, length, count)
        return self._windows.get_or_compute(
            key, lambda: evaluation_windows(loaded.tokenizer, held_out_texts(source, upload), length, count, source))

    def reference(self, loaded: LoadedModel, evaluation: EvaluationSet, batch_size: int = 4,
                  progress: Progress = no_progress) -> FloatReference:
        return self._floats.get_or_compute(loaded.model, evaluation.key,
                                           lambda: float_reference(loaded, evaluation, batch_size, progress))

    def evaluate(self, loaded: LoadedModel, quantization: Quantization, calibrated: Calibrated, evaluation: EvaluationSet,
                 progress: Progress = no_progress, *,
                 on_plan: Callable[[QuantizedModel], None] | None = None) -> tuple[QuantReport, bool]:
        """``engine.quant.evaluate`` with the float reference and the whole report reused when
        known; returns the report and whether it was reused (``on_plan`` is then not called)."""
        key = (loaded.spec, evaluation.key, quantization.spec, quantization.sensitivity, *calibrated.key(quantization))
        found = self._reports.peek(key)
        if found is not None:
            return found, True
        report = evaluate(loaded, quantization, calibrated, evaluation, progress, make_reference=self.reference,
                          on_plan=on_plan)
        self._reports.put(key, report)
        return report, False
