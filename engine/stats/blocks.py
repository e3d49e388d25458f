"""NVFP4's blocks (16 consecutive channels of a token) as the statistics see them: from the
histogram of their |max|, ModelOpt's headroom amax for the global scale, and how far the blocks'
maxima spread against what one global scale can hold in FP8."""
from __future__ import annotations

import torch

from engine.stats.accumulators import TENSOR_BINS
from engine.stats.histogram import LogBins, percentiles_from_counts

# ModelOpt's NVFP4ActHeadroomCalibrator defaults
HEADROOM_RHO, ANCHOR_PERCENTILE, FLOOR_PERCENTILE, ANCHOR_FLOOR_RATIO = 16384.0, 1.0, 99.99, 1e6
FP8_NORMAL_RANGE = 448.0 / 2.0**-6  # 28,672: the block scales one global scale can hold as normal e4m3 numbers


def bin_values(bins: LogBins) -> torch.Tensor:
    """A representative |x| per bin: the middle of its edges (bins are ~3% wide, so close enough)."""
    edges = bins.edges()
    return (edges[:-1] + edges[1:]) / 2


def block_percentile(block_counts: torch.Tensor, percent: float, maximum: float, below: float = 0.0,
                     bins: LogBins = TENSOR_BINS) -> float:
    """The ``percent`` percentile of the blocks' |max|, leaving out blocks whose |max| is below ``below``."""
    counts = block_counts.double().cpu().clone()
    if below > 0:
        counts[bin_values(bins) < below] = 0
    if counts.sum() == 0:
        return 0.0
    quantile = torch.tensor([percent / 100], dtype=torch.float64, device="cpu")
    return float(percentiles_from_counts(counts, bins, quantile, torch.tensor(maximum, dtype=torch.float64, device="cpu"))[0])


def headroom_amax(block_counts: torch.Tensor, block_absmax: float, bins: LogBins = TENSOR_BINS) -> float:
    """ModelOpt's NVFP4 headroom: amax = max(rho · anchor, floor), the anchor the 1st percentile of
    the blocks' |max| (blocks below floor / 1e6 left out), the floor their 99.99th percentile, so no
    calibrated block saturates and the rest of FP8's scale range is left above them; where the
    blocks span more than FP8's normal range (28,672) no global scale holds both ends: the floor."""
    if block_counts.sum() == 0:
        return block_absmax
    floor = block_percentile(block_counts, FLOOR_PERCENTILE, block_absmax, bins=bins)
    anchor = (block_percentile(block_counts, ANCHOR_PERCENTILE, block_absmax, floor / ANCHOR_FLOOR_RATIO, bins)
              if floor > 0 else 0.0)
    if floor <= 0 or anchor <= 0:
        return block_absmax
    if floor / anchor > FP8_NORMAL_RANGE:
        return floor
    return max(HEADROOM_RHO * anchor, floor)


