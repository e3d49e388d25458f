"""An FP8 KV cache's static scales from the cached keys' and values' statistics (engine.stats.kv_cache),
as compressed-tensors computes them from a range: scale = range / 448 in the model's dtype (a zero
range gets the dtype's epsilon), shaped [1] per tensor or [kv heads, 1, 1] per head. The range is the
|max| (llm-compressor's min-max, over the whole set), a percentile of |x|, or the clip with the least
expected error (mse) or the nearest quantized histogram (entropy) for e4m3; constant is scale 1."""
from __future__ import annotations

import pandas as pd
import torch

from engine.errors import CalibscopeError
from engine.quant.activations.ranges import entropy_clip, mse_clip, relative_error
from engine.quant.formats.floats import FP8_MAX, NumberFormat, fp8_scale
from engine.quant.formats.kv import KVScales
from engine.quant.specs import KVCacheSpec, KVRange, KVStrategy
from engine.stats.kv_cache import TENSORS, CachedTensorStats, KVReport


def kv_ranges(stats: CachedTensorStats, spec: KVCacheSpec) -> torch.Tensor:
    """The range each scale covers, float64: [heads] per head, [1] per tensor."""
    per_head = spec.strategy is KVStrategy.HEAD
    absmax = stats.absmax.double() if per_head else stats.absmax.double().max().reshape(1)
    counts = stats.counts if per_head else stats.counts.sum(0, keepdim=True)
    method = spec.range_method
    if method is KVRange.MINMAX:
        return absmax
    if method is KVRange.PERCENTILE:
        return stats.percentile(spec.percentile / 100.0, per_head).double()
    clip = mse_clip if method is KVRange.MSE else entropy_clip
    return torch.tensor([clip(row, float(top), 8, fmt=NumberFormat.FP8) for row, top in zip(counts, absmax)],
                        dtype=torch.float64)


def kv_scale(stats: CachedTensorStats, spec: KVCacheSpec, dtype: torch.dtype) -> torch.Tensor:
    """The scale tensor a checkpoint stores for one layer's keys or values, in ``dtype``."""
    shape = (stats.absmax.numel(), 1, 1) if spec.strategy is KVStrategy.HEAD else (1,)
    return fp8_scale(kv_ranges(stats, spec).to(dtype)).reshape(shape)


def kv_cache_scales(report: KVReport | None, spec: KVCacheSpec, dtype: torch.dtype, layers: list[str],
                    heads: int) -> dict[str, KVScales]:
    """Every attention layer's scales (``layers``: the model's cached attention modules, ``heads`` KV
    heads each; ``report`` is not read for constant scales, which need no statistics)."""
    if not spec.calibrated:
        ones = torch.ones((heads, 1, 1) if spec.strategy is KVStrategy.HEAD else (1,), dtype=dtype)
        return {name: KVScales(ones, ones) for name in layers}
    missing = next((name for name in layers if name not in report.layers), None)
    if missing is not None:
        raise CalibscopeError(f"The KV cache's statistics have nothing for {missing}: collect them again on this model and set.")
    return {name: KVScales(*(kv_scale(report.layers[name][tensor], spec, dtype) for tensor in TENSORS)) for name in layers}


def kv_cache_table(report: KVReport | None, scales: dict[str, KVScales]) -> pd.DataFrame:
    """One row per layer, tensor and head: the |max| seen, the range the scale covers (scale x 448),
    the share of the |max| it keeps, and the expected relative squared error of the cache's rounding
    and clipping over that head's histogram."""
    rows = []
    for block, (name, scale) in enumerate(scales.items()):
        for tensor, values in zip(TENSORS, (scale.keys, scale.values)):
            flat = values.float().reshape(-1)
            stats = report.layers.get(name, {}).get(tensor) if report is not None else None
            heads = stats.absmax.numel() if stats is not None else flat.numel()
            for head in range(heads):
                clip = float(flat[head if flat.numel() > 1 else 0]) * FP8_MAX
                row = {"layer": name, "block": block, "tensor": tensor, "head": head, "range": clip}
                if stats is not None:
                    absmax = float(stats.absmax[head])
                    row.update(absmax=absmax, kept=clip / absmax if absmax > 0 else float("nan"),
                               error=relative_error(stats.counts[head], clip, 8, fmt=NumberFormat.FP8))
                rows.append(row)
    return pd.DataFrame(rows)


KV_METHODS = {"p99.99": KVCacheSpec(range_method=KVRange.PERCENTILE), "MSE": KVCacheSpec(range_method=KVRange.MSE),
              "entropy": KVCacheSpec(range_method=KVRange.ENTROPY)}


def kv_method_ranges(report: KVReport) -> pd.DataFrame:
    """Per layer and tensor (per tensor scales): the |max| and what each other range method would set,
    as a multiple of the |max| (min-max is 1), read from the statistics without another pass."""
    rows = []
    for block, (name, tensors) in enumerate(report.layers.items()):
        for tensor, stats in tensors.items():
            absmax = float(stats.absmax.max())
            row = {"layer": name, "block": block, "tensor": tensor, "heads": stats.absmax.numel(), "absmax": absmax}
            for label, spec in KV_METHODS.items():
                row[label] = float(kv_ranges(stats, spec)[0]) / absmax if absmax > 0 else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)
