"""Experiments over calibration sets: strategy comparisons, sample-count sweeps, and the held-out
evaluations (with their bounded caches) they are measured on."""
from engine.experiments.cache import ResultCache
from engine.experiments.compare import COMPARED, ComparisonSpec, compare, summarize
from engine.experiments.evaluations import (
           HELD_OUT,
           UPLOADED,
           EvaluationCache,
           held_out_texts,
)
from engine.experiments.sweep import SweepResult, SweepSpec, snapshot_megabytes, sweep

__all__ = ["COMPARED", "HELD_OUT", "UPLOADED", "ComparisonSpec", "EvaluationCache", "ResultCache", "SweepResult",
           "SweepSpec", "compare", "held_out_texts", "snapshot_megabytes", "summarize", "sweep"]
