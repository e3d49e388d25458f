"""Two importance matrices side by side, tensor by tensor: how far apart channel by channel, and
whether they rank the channels alike (what a quantizer acts on)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine.imatrix.matrix import Imatrix, ImatrixEntry, tensor_order

TOP_SHARE = 0.01  # the top 1% of channels by importance


def _aligned(a: ImatrixEntry, b: ImatrixEntry) -> tuple[np.ndarray, np.ndarray] | None:
    """Both importances as flat float64 vectors, or None when the shapes cannot match (a legacy
    file keeps experts as one flat row: matched by size)."""
    x, y = a.importance(), b.importance()
    if x.size != y.size:
        return None
    return x.reshape(-1).astype(np.float64), y.reshape(-1).astype(np.float64)


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values))
    return ranks


def tensor_comparison(a: ImatrixEntry, b: ImatrixEntry) -> dict:
    """Relative differences of the mean x² per channel (|a - b| / |b|: p50, p99, max), Spearman
    rank correlation, share of b's top 1% channels also in a's top 1%, and mean(a) / mean(b)."""
    pair = _aligned(a, b)
    row = {"channels": a.channels, "experts": a.experts, "tokens_a": int(a.counts.max()), "tokens_b": int(b.counts.max()),
           "counts_equal": a.counts.shape == b.counts.shape and bool((a.counts == b.counts).all())}
    if pair is None:
        return {**row, "comparable": False}
    x, y = pair
    both = np.isfinite(x) & np.isfinite(y)
    x, y = x[both], y[both]
    relative = np.abs(x - y) / np.maximum(np.abs(y), np.finfo(np.float64).tiny)
    top = max(1, round(TOP_SHARE * len(x)))
    overlap = len(set(np.argsort(-x)[:top]) & set(np.argsort(-y)[:top])) / top
    spearman = float(np.corrcoef(_ranks(x), _ranks(y))[0, 1]) if len(x) > 1 else 1.0
    return {**row, "comparable": True, "p50_relative_difference": float(np.median(relative)),
            "p99_relative_difference": float(np.percentile(relative, 99)), "max_relative_difference": float(relative.max()),
            "spearman": spearman, "top1pct_overlap": overlap, "mean_ratio": float(x.mean() / y.mean()) if y.mean() else np.nan}


def compare_imatrices(a: Imatrix, b: Imatrix) -> pd.DataFrame:
    """One row per tensor both hold, in block order; ``attrs`` lists the tensors only one holds."""
    common = sorted(set(a.entries) & set(b.entries), key=tensor_order)
    frame = pd.DataFrame([{"tensor": name, **tensor_comparison(a.entries[name], b.entries[name])} for name in common])
    frame.attrs["only_a"] = sorted(set(a.entries) - set(b.entries), key=tensor_order)
    frame.attrs["only_b"] = sorted(set(b.entries) - set(a.entries), key=tensor_order)
    return frame
