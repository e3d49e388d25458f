"""Streaming activation statistics and GPTQ Hessians: accumulators, one-pass collection, reports."""
from engine.stats.accumulators import ActivationAccumulator, TokenIndex
from engine.stats.collect import collect, select_layers
from engine.stats.report import StatsReport
from engine.stats.specs import Capture, Diagnostics, HessianSpec, Precision, StatsSpec, Storage

__all__ = ["ActivationAccumulator", "Capture", "Diagnostics", "HessianSpec", "Precision", "StatsReport", "StatsSpec", "Storage",
           "TokenIndex", "collect", "select_layers"]
