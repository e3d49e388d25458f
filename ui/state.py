"""Per-session state and the process-wide, bounded, locked model cache.

Sessions keep only specs and small results (in ``gr.State``, so visitors never share data);
models are large and read-only during calibration, so one cache serves every session.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import datasets
import pandas as pd

from engine import LoadedModel, ModelSpec, load_model
from engine.errors import CalibscopeError
from engine.progress import Progress, no_progress
from engine.quant import QuantReport
from engine.sampling import CalibrationSet
from engine.specs import CorpusSpec
from engine.stats import StatsReport
from engine.stats.hessian_report import HessianReport, spec_record


@dataclass
class Session:
    """What one visitor has chosen and built so far."""

    model_spec: ModelSpec | None = None
    corpus_spec: CorpusSpec | None = None
    corpus: datasets.Dataset | None = None
    calibration: CalibrationSet | None = None
    stats: StatsReport | None = None
    hessians: HessianReport | None = None
    quantization: QuantReport | None = None
    quant_runs: list[dict] = field(default_factory=list)  # one small record per Quantize run, for comparison
    comparison: pd.DataFrame | None = None  # the Compare tab's measurements

    def with_data(self, model_spec: ModelSpec, corpus_spec: CorpusSpec, corpus: datasets.Dataset) -> Session:
        """A new model or corpus: what was built from the old ones no longer applies and is dropped
        (the record of quantization runs stays, for comparison)."""
        return Session(model_spec=model_spec, corpus_spec=corpus_spec, corpus=corpus, quant_runs=self.quant_runs,
                       comparison=self.comparison)

    def with_calibration(self, calibration: CalibrationSet) -> Session:
        """A new calibration set: statistics, Hessians and quantization of the old one are dropped."""
        return replace(self, calibration=calibration, stats=None, hessians=None, quantization=None)

    def _same_set(self, report) -> bool:
        return report is not None and self.calibration is not None and \
            report.meta.get("calibration_sha256") == self.calibration.manifest.token_sha256

    def reusable_stats(self, spec) -> StatsReport | None:
        """This session's statistics if they were collected on this set with exactly ``spec``."""
        return self.stats if self._same_set(self.stats) and self.stats.spec == spec else None

    def reusable_hessians(self, spec) -> HessianReport | None:
        """This session's Hessians if they were collected on this set with exactly ``spec``."""
        return self.hessians if self._same_set(self.hessians) and self.hessians.meta.get("spec") == spec_record(spec) else None

    def require_corpus(self) -> datasets.Dataset:
        if self.model_spec is None or self.corpus is None:
            raise CalibscopeError("Load a model and a corpus in the Model & Data tab first.")
        return self.corpus

    def require_calibration(self) -> CalibrationSet:
        if self.calibration is None or self.model_spec is None:
            raise CalibscopeError("Build a calibration set in the Dataset tab first.")
        return self.calibration

    def require_hessians(self) -> HessianReport:
        if self.hessians is None:
            raise CalibscopeError("Collect Hessians first.")
        return self.hessians

    def require_comparison(self) -> pd.DataFrame:
        if self.comparison is None:
            raise CalibscopeError("Run a comparison first.")
        return self.comparison

    def require_stats(self) -> StatsReport:
        if self.stats is None:
            raise CalibscopeError("Collect activation statistics first.")
        return self.stats


class ModelCache:
    """At most ``capacity`` loaded models, least recently used evicted first.

    Two sessions asking for the same model at once load it once: the second waits on a per-model
    lock instead of loading a second copy.
    """

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self._models: OrderedDict[ModelSpec, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[ModelSpec, threading.Lock] = {}

    def _cached(self, spec: ModelSpec) -> LoadedModel | None:
        with self._lock:
            if spec in self._models:
                self._models.move_to_end(spec)
                return self._models[spec]
            return None

    def get(self, spec: ModelSpec, progress: Progress = no_progress) -> LoadedModel:
        found = self._cached(spec)
        if found is not None:
            return found
        with self._lock:
            spec_lock = self._loading.setdefault(spec, threading.Lock())
        with spec_lock:
            found = self._cached(spec)
            if found is not None:
                return found
            loaded = load_model(spec, progress)
            with self._lock:
                self._models[spec] = loaded
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            return loaded

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def __contains__(self, spec: ModelSpec) -> bool:
        with self._lock:
            return spec in self._models


MODELS = ModelCache()
