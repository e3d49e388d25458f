"""Experiments over calibration sets: strategy comparisons, sample-count sweeps, the held-out
evaluations (with their bounded caches) they are measured on, and quantization and comparison runs
as config data."""
from engine.experiments.cache import ResultCache
from engine.experiments.compare import COMPARED, ComparisonSpec, compare, summarize
from engine.experiments.evaluations import (
           HELD_OUT,
           UPLOADED,
           EvaluationCache,
           held_out_texts,
)
from engine.experiments.runs import ComparisonRun, EvaluationSpec, QuantRun, comparison_run_from, quant_run_from
from engine.experiments.runs import as_json as run_as_json
from engine.experiments.sweep import SweepResult, SweepSpec, snapshot_megabytes, sweep

__all__ = ["COMPARED", "HELD_OUT", "UPLOADED", "ComparisonRun", "ComparisonSpec", "EvaluationCache", "EvaluationSpec", "QuantRun",
           "ResultCache", "SweepResult", "SweepSpec", "compare", "comparison_run_from", "held_out_texts", "quant_run_from",
           "run_as_json", "snapshot_megabytes", "summarize", "sweep"]
