"""What one visitor has chosen and built so far (kept in ``gr.State``, so visitors never share it)."""
from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import datasets
import pandas as pd

from engine.errors import CalibscopeError
from engine.experiments import ComparisonRun, SweepResult
from engine.imatrix import Imatrix
from engine.quant import Calibrated, QuantReport
from engine.sampling import CalibrationSet
from engine.specs import CorpusSpec, ModelSpec
from engine.stats import HessianReport, HessianSpec, KVReport, Precision, StatsReport, StatsSpec, Storage, spec_record
from ui.exports import ExportFolder

MAKES = {
    "stats": "Collect activation statistics first (Activation ranges tab).",
    "hessians": "Collect Hessians first (Hessians tab).",
    "sweep": "Run a sample-count sweep first (Sensitivity tab).",
    "comparison": "Run a comparison first (Compare tab).",
}
# What an idle session gives back when other visitors' work needs the memory: what one step remakes.
RELEASABLE = ("hessians", "stats", "sweep")
IDLE_S = 120.0  # a session is idle once no request of its visitor came for this long: only then is anything taken
FREED = "Your {what} were freed while this session was idle, to make room for other visitors' work on this shared Space. "


@dataclass(eq=False)
class Session:
    """A visitor's model and corpus, the calibration set built from them, and what was measured
    on it. Results belong to the set they were measured on: a new set drops them, a new model or
    corpus drops the set too; the quantization runs and the comparison stay for side-by-side views.

    Compared by identity (every change makes a new Session): Gradio compares a State's old and new
    values to fire its change event, and field-by-field equality of datasets and arrays is neither
    cheap nor well-defined."""

    model_spec: ModelSpec | None = None
    corpus_spec: CorpusSpec | None = None
    corpus: datasets.Dataset | None = None
    calibration: CalibrationSet | None = None
    stats: StatsReport | None = None
    hessians: HessianReport | None = None
    kv_cache: KVReport | None = None
    sweep: SweepResult | None = None
    quant_runs: list[QuantReport] = field(default_factory=list)  # every Quantize run of the session, in order
    comparison: pd.DataFrame | None = None  # the Compare tab's measurements
    comparison_run: ComparisonRun | None = None  # what produced them (repeated by the exported run config)
    exports: ExportFolder = field(default_factory=ExportFolder)  # this visitor's downloads, removed with the session
    # importance matrices by label, collected or loaded, in order: kept across calibration sets to compare them
    imatrices: dict[str, Imatrix] = field(default_factory=dict)
    freed: tuple[str, ...] = ()  # results given back to the Space's memory while the session was idle
    busy: int = field(default=0, init=False, repr=False)  # steps running on this session now: never freed then
    active_at: float = field(default_factory=time.monotonic, init=False, repr=False)  # its visitor's last request

    @property
    def quantization(self) -> QuantReport | None:
        """The latest quantization run."""
        return self.quant_runs[-1] if self.quant_runs else None

    @property
    def calibrated(self) -> Calibrated:
        """What quantization runs on: this session's set and what was collected from it."""
        return Calibrated(self.calibration, self.stats, self.hessians, kv_cache=self.kv_cache)

    def with_data(self, model_spec: ModelSpec, corpus_spec: CorpusSpec, corpus: datasets.Dataset) -> Session:
        return Session(model_spec=model_spec, corpus_spec=corpus_spec, corpus=corpus, quant_runs=self.quant_runs,
                       comparison=self.comparison, comparison_run=self.comparison_run, exports=self.exports)

    def close(self) -> None:
        """The visitor left (or the session expired): remove their downloads."""
        self.exports.close()

    def releaser(self, value: object) -> Callable[[], bool] | None:
        """How this session gives ``value`` back when the Space needs its memory (None: it keeps it):
        only while no step runs on it, and only what one step makes again (RELEASABLE)."""
        names = [name for name in RELEASABLE if getattr(self, name) is value]
        if not names:
            return None
        # the ledger keeps this function: it must keep neither the session nor the value alive
        session, identity = weakref.ref(self), id(value)

        def release() -> bool:
            held = session()
            if held is None or held.busy or time.monotonic() - held.active_at < IDLE_S:
                return False
            for name in names:
                if id(getattr(held, name)) == identity:
                    setattr(held, name, None)
                    held.freed = (*held.freed, name)
            return True

        return release

    def results(self) -> list[tuple[str, object]]:
        """(what, object) for everything this session holds in memory: what the memory budget counts
        while the session keeps it."""
        held = [("the corpus", self.corpus), ("the calibration set", self.calibration), ("statistics", self.stats),
                ("Hessians", self.hessians), ("the KV cache's statistics", self.kv_cache), ("a sample-count sweep", self.sweep),
                ("the comparison", self.comparison)]
        held += [("a quantization run", report) for report in self.quant_runs]
        held += [(f"importance matrix {label}", imatrix) for label, imatrix in self.imatrices.items()]
        return [(what, value) for what, value in held if value is not None]

    def with_calibration(self, calibration: CalibrationSet) -> Session:
        return replace(self, calibration=calibration, stats=None, hessians=None, kv_cache=None, sweep=None)

    def with_run(self, report: QuantReport) -> Session:
        return replace(self, quant_runs=[*self.quant_runs, report])

    def _same_set(self, report) -> bool:
        return report is not None and self.calibration is not None and \
            report.meta.get("calibration_sha256") == self.calibration.manifest.token_sha256

    def reusable_stats(self, spec: StatsSpec) -> StatsReport | None:
        """This session's statistics if they were collected on this set with exactly ``spec``."""
        return self.stats if self._same_set(self.stats) and self.stats.spec == spec else None

    def reusable_hessians(self, spec: HessianSpec) -> HessianReport | None:
        """This session's Hessians if they were collected on this set with exactly ``spec``."""
        return self.hessians if self._same_set(self.hessians) and self.hessians.meta.get("spec") == spec_record(spec) else None

    def sweep_sums(self, spec: HessianSpec) -> tuple[dict, dict[str, str]] | None:
        """The whole-set Σ XᵀX the last sample-count sweep kept, with its input sharing, when a
        Hessian collection with ``spec`` on this set would sum the same: (sums, shared) or None."""
        sweep = self.sweep
        if sweep is None or not sweep.totals or not self._same_set(sweep):
            return None
        if spec.include_head or not spec.share_inputs or spec.storage is not Storage.MODEL or spec.dtype is not Precision.FLOAT32:
            return None  # the sweep summed every layer's input in float32 beside the model, inputs shared
        return sweep.totals, sweep.shared

    def require_model(self) -> ModelSpec:
        if self.model_spec is None:
            raise CalibscopeError("Load a model and a corpus in the Model & Data tab first.")
        return self.model_spec

    def require_corpus(self) -> datasets.Dataset:
        if self.model_spec is None or self.corpus is None:
            raise CalibscopeError("Load a model and a corpus in the Model & Data tab first.")
        return self.corpus

    def require_calibration(self) -> CalibrationSet:
        if self.calibration is None or self.model_spec is None:
            raise CalibscopeError("Build a calibration set in the Dataset tab first.")
        return self.calibration

    def require_imatrix(self, label: str) -> Imatrix:
        if label not in self.imatrices:
            raise CalibscopeError("Collect an importance matrix or load one first." if not self.imatrices else
                                  f"No importance matrix is called '{label}': choose one of the list.")
        return self.imatrices[label]

    def require(self, result: str):
        """One of this session's results (stats, hessians, sweep, comparison), or a message that says
        which step makes it (and, when the Space took it back, that it did)."""
        value = getattr(self, result)
        if value is None:
            freed = FREED.format(what={"stats": "activation statistics", "sweep": "sweep results"}.get(result, result))
            raise CalibscopeError((freed if result in self.freed else "") + MAKES[result])
        return value
