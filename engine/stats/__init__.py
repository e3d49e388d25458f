"""Streaming activation statistics: accumulators, hooks, one-pass collection and the report."""
from engine.stats.accumulators import ActivationAccumulator, TokenIndex
from engine.stats.collect import collect, select_layers
from engine.stats.hooks import StopForward, observing
from engine.stats.report import StatsReport
from engine.stats.specs import StatsSpec

__all__ = ["ActivationAccumulator", "StatsReport", "StatsSpec", "StopForward", "TokenIndex", "collect", "observing", "select_layers"]
