"""Is this calibration set good for FP8 and NVFP4? Per distinct layer input, what each calibration
method would set, as a multiple of the set's |max| (FP8: the static input range; NVFP4: the amax its
global scale 448 · 6 / amax comes from), and how widely the inputs' 16-channel blocks spread.

An NVFP4 block's scale is global · |max| / 6 in e4m3, whose normal numbers span 448 / 2^-6 = 28,672:
when the blocks' maxima (99.99th over 1st percentile) spread wider than that, no global scale keeps
both ends normal, and the smallest blocks fall to e4m3's subnormals or to zero (ModelOpt warns of
the same and uses the floor).
"""
from __future__ import annotations

import pandas as pd
import torch

from engine.hooks import Side
from engine.quant.activations.ranges import entropy_clip, mse_clip
from engine.quant.formats.floats import NumberFormat
from engine.stats import (
    ANCHOR_FLOOR_RATIO,
    FP8_NORMAL_RANGE,
    TENSOR_BINS,
    StatsReport,
    block_percentile,
    headroom_amax,
    percentiles_from_counts,
)

PERCENTILE = 99.99


def _input_rows(stats: StatsReport) -> pd.DataFrame:
    """The distinct layer inputs of a statistics report, in execution order."""
    summary = stats.summary
    return summary[(summary["side"] == Side.INPUT) & (summary["shared_with"] == "")]


def format_ranges(stats: StatsReport) -> pd.DataFrame:
    """One row per distinct input: absmax; the FP8 range by p99.99, MSE and entropy over its |max|;
    NVFP4's headroom amax over its |max|; the blocks' spread and whether it exceeds FP8's normal range."""
    rows = []
    for key in _input_rows(stats)["key"]:
        arrays = stats.channels[key]
        absmax = float(arrays["absmax"].max())
        counts = arrays["tensor_counts"]
        row = {"key": key, "absmax": absmax}
        if absmax > 0:
            counts = counts.double().cpu()
            quantile = torch.tensor([PERCENTILE / 100], dtype=torch.float64, device="cpu")
            percentile = float(percentiles_from_counts(counts, TENSOR_BINS, quantile, torch.tensor(absmax, device="cpu"))[0])
            row.update({"fp8_percentile": percentile / absmax,
                        "fp8_mse": mse_clip(counts, absmax, 8, fmt=NumberFormat.FP8) / absmax,
                        "fp8_entropy": entropy_clip(counts, absmax, 8, NumberFormat.FP8) / absmax})
        if absmax > 0 and "block_counts" in arrays:
            blocks = arrays["block_counts"]
            floor = block_percentile(blocks, PERCENTILE, absmax)
            anchor = block_percentile(blocks, 1.0, absmax, floor / ANCHOR_FLOOR_RATIO)
            spread = floor / anchor if anchor > 0 else float("inf")
            row.update({"nvfp4_headroom": headroom_amax(blocks, absmax) / absmax, "block_spread": spread,
                        "beyond_fp8_range": spread > FP8_NORMAL_RANGE})
        rows.append(row)
    return pd.DataFrame(rows)
