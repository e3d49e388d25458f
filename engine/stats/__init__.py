"""Streaming activation statistics and GPTQ Hessians: accumulators, one-pass collection, reports."""
from engine.stats.accumulators import TENSOR_BINS, ActivationAccumulator, TokenIndex, all_reduce_count
from engine.stats.attribution import Attribution, attribute
from engine.stats.blocks import ANCHOR_FLOOR_RATIO, FP8_NORMAL_RANGE, bin_values, block_percentile, headroom_amax
from engine.stats.collect import collect, select_layers
from engine.stats.collect import memory_plan as stats_memory_plan
from engine.stats.experts import ExpertAccumulator, ExpertReport, ExpertSpec, collect_expert_stats
from engine.stats.experts import finished_report as finished_expert_report
from engine.stats.hessian import HessianAccumulator
from engine.stats.hessian_report import (
    HESSIAN_FINDINGS,
    NO_HESSIAN_FINDING,
    HessianReport,
    collect_hessians,
    hessian_megabytes,
    hessians_from_sums,
    spec_record,
)
from engine.stats.hessian_report import memory_plan as hessian_memory_plan
from engine.stats.hessian_report import request_for as hessian_request
from engine.stats.histogram import LogBins, percentiles_from_counts
from engine.stats.kv_cache import POSITION_EDGES, CachedTensorStats, KVReport, bucket_label, collect_kv
from engine.stats.prefixes import PrefixAccumulator, prefix_buckets
from engine.stats.report import StatsReport, percentile_column
from engine.stats.specs import Capture, Diagnostics, HessianSpec, Precision, StatsSpec, Storage, layer_kinds

__all__ = [
    "ANCHOR_FLOOR_RATIO",
    "FP8_NORMAL_RANGE",
    "HESSIAN_FINDINGS",
    "NO_HESSIAN_FINDING",
    "POSITION_EDGES",
    "TENSOR_BINS",
    "ActivationAccumulator",
    "Attribution",
    "CachedTensorStats",
    "Capture",
    "Diagnostics",
    "ExpertAccumulator",
    "ExpertReport",
    "ExpertSpec",
    "HessianAccumulator",
    "HessianReport",
    "HessianSpec",
    "KVReport",
    "LogBins",
    "Precision",
    "PrefixAccumulator",
    "StatsReport",
    "StatsSpec",
    "Storage",
    "TokenIndex",
    "all_reduce_count",
    "attribute",
    "bin_values",
    "block_percentile",
    "bucket_label",
    "collect",
    "collect_expert_stats",
    "collect_hessians",
    "collect_kv",
    "finished_expert_report",
    "headroom_amax",
    "hessian_megabytes",
    "hessian_memory_plan",
    "hessian_request",
    "hessians_from_sums",
    "layer_kinds",
    "percentile_column",
    "percentiles_from_counts",
    "prefix_buckets",
    "select_layers",
    "spec_record",
    "stats_memory_plan",
]
