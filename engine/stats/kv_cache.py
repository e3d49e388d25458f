"""What a KV cache holds, streamed: the keys (after the key norm and the rotary embedding) and values
each attention layer caches, per KV head, overall and by token position.

Observed where compressed-tensors' ``QuantizedKVCache`` quantizes them (``engine.hooks.tapping_kv``):
[batch, kv heads, tokens, head dim], before grouped-query attention repeats the heads, so a head here
is one of the model's ``num_key_value_heads``. Per layer and tensor: |max| per head, |max| per head in
each bucket of token positions (rotary positions change the keys' distribution along the sequence: a
range calibrated on short samples may not hold at long context), tokens per bucket, and each head's
|x| histogram in the statistics' log bins (percentile, MSE and entropy ranges are read from it).
Padding is never counted; a batch's positions are found on the host from its attention mask and
moved to the device once, so no update waits for the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from engine import guard
from engine.errors import CalibscopeError
from engine.hooks import cached_attention, headless_forward, tapping_kv
from engine.models import LoadedModel
from engine.progress import Progress, no_progress
from engine.runner import batch_working_bytes
from engine.sampling import CalibrationSet
from engine.stats.accumulators import TENSOR_BINS, add_counts_
from engine.stats.histogram import magnitude_bits, percentiles_from_counts

# token positions [edge i, edge i + 1): the first token alone (attention sinks), then widening buckets
POSITION_EDGES = (0, 1, 16, 128, 512, 2048, 8192)
TENSORS = ("key", "value")


def position_buckets(positions: torch.Tensor) -> torch.Tensor:
    """The bucket of each position (>= 0) in POSITION_EDGES; the last bucket is open-ended."""
    return torch.bucketize(positions, torch.tensor(POSITION_EDGES[1:], device=positions.device), right=True)


@dataclass(frozen=True)
class CachedTokens:
    """One batch's tokens, found on the host from its attention mask and moved once: ``real`` [batch,
    tokens] 1 for a token, 0 for padding (the model's dtype), ``buckets`` [batch, tokens] each token's
    position bucket, ``kept`` the flat indices of the real tokens and ``kept_buckets`` their buckets."""

    real: torch.Tensor
    buckets: torch.Tensor
    kept: torch.Tensor
    kept_buckets: torch.Tensor

    @classmethod
    def of(cls, mask: torch.Tensor, device: torch.device) -> CachedTokens:
        real = mask.bool()
        buckets = position_buckets(token_positions(mask).clamp(min=0))
        kept = torch.nonzero(real.reshape(-1)).reshape(-1)  # on the host: no device read-back
        return cls(*(tensor.to(device, non_blocking=True) for tensor in (real.float(), buckets, kept, buckets.reshape(-1)[kept])))


@dataclass
class CachedTensorStats:
    """One layer's keys or values: |max| per head [H] and per bucket and head [buckets, H] (0 where a
    bucket saw no token), tokens per bucket [buckets], |x| histogram per head [H, bins]."""

    absmax: torch.Tensor
    bucket_absmax: torch.Tensor
    bucket_tokens: torch.Tensor
    counts: torch.Tensor

    @classmethod
    def empty(cls, heads: int, device: torch.device) -> CachedTensorStats:
        buckets = len(POSITION_EDGES)
        return cls(torch.zeros(heads, device=device), torch.zeros(buckets, heads, device=device),
                   torch.zeros(buckets, dtype=torch.int64, device=device),
                   torch.zeros(heads, TENSOR_BINS.count, dtype=torch.int64, device=device))

    def update(self, x: torch.Tensor, tokens: CachedTokens) -> None:
        """Add ``x`` [batch, H, tokens, D], its tokens described by ``tokens`` (padding left out)."""
        magnitude = x.detach().abs().float() * tokens.real[:, None, :, None]  # float32 holds bf16 / fp16 exactly
        per_token = magnitude.amax(-1)  # [batch, H, tokens]
        torch.maximum(self.absmax, per_token.amax((0, 2)), out=self.absmax)
        heads = x.shape[1]
        index = tokens.buckets[:, None, :].expand_as(per_token).transpose(0, 1).reshape(heads, -1)  # [H, batch * tokens]
        found = torch.zeros_like(self.bucket_absmax.T).scatter_reduce_(1, index, per_token.transpose(0, 1).reshape(heads, -1),
                                                                      "amax")
        torch.maximum(self.bucket_absmax, found.T, out=self.bucket_absmax)
        add_counts_(self.bucket_tokens, tokens.kept_buckets)
        values = x.detach().transpose(1, 2).reshape(-1, heads, x.shape[-1]).index_select(0, tokens.kept)  # [real tokens, H, D]
        bins = magnitude_bits(values)
        bins >>= TENSOR_BINS.shift
        bins = TENSOR_BINS.index_of_shifted_(bins) + torch.arange(heads, device=x.device)[None, :, None] * TENSOR_BINS.count
        add_counts_(self.counts, bins.reshape(-1))

    def percentile(self, quantile: float, per_head: bool) -> torch.Tensor:
        """|x|'s ``quantile`` (0..1) per head [H], or of the whole tensor [1]."""
        if per_head:
            counts, maximum = self.counts, self.absmax
        else:
            counts, maximum = self.counts.sum(0, keepdim=True), self.absmax.max().reshape(1)
        wanted = torch.tensor([quantile], dtype=torch.float64, device=counts.device)
        return percentiles_from_counts(counts, TENSOR_BINS, wanted, maximum)[:, 0]

    def cpu(self) -> CachedTensorStats:
        return CachedTensorStats(*(tensor.cpu() for tensor in (self.absmax, self.bucket_absmax, self.bucket_tokens, self.counts)))


@dataclass
class KVReport:
    """Per attention module (by name, in model order): its keys' and values' statistics (``layers[name]
    ["key" | "value"]``). ``meta``: the set's hash, tokens, heads and head width, the position edges."""

    layers: dict[str, dict[str, CachedTensorStats]]
    meta: dict = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """One row per layer, tensor and head: |max|, p99.9, and |max| in each position bucket."""
        rows = []
        for block, (name, tensors) in enumerate(self.layers.items()):
            for tensor, stats in tensors.items():
                tail = stats.percentile(0.999, per_head=True)
                for head in range(stats.absmax.numel()):
                    row = {"layer": name, "block": block, "tensor": tensor, "head": head,
                           "absmax": float(stats.absmax[head]), "p99.9": float(tail[head])}
                    row.update({f"absmax {bucket_label(i)}": float(stats.bucket_absmax[i, head])
                                if stats.bucket_tokens[i] else np.nan for i in range(len(POSITION_EDGES))})
                    rows.append(row)
        return pd.DataFrame(rows)


def bucket_label(index: int) -> str:
    """Positions of bucket ``index`` in words, e.g. "positions 16-127"."""
    low = POSITION_EDGES[index]
    if index + 1 == len(POSITION_EDGES):
        return f"positions {low}+"
    high = POSITION_EDGES[index + 1] - 1
    return f"position {low}" if high == low else f"positions {low}-{high}"


def token_positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position among its row's real tokens (left or right padding), -1 on padding."""
    return torch.where(mask.bool(), mask.cumsum(1) - 1, -1)


def collect_kv(loaded: LoadedModel, calibration: CalibrationSet, batch_size: int = 4,
               progress: Progress = no_progress) -> KVReport:
    """The KV cache's statistics over ``calibration``, one forward of the float model (in memory) per
    batch of ``batch_size`` sequences, under the model's lock."""
    loaded.require_resident("Calibrating the KV cache")
    if len(calibration) == 0:
        raise CalibscopeError("The calibration set is empty: build a set first.")
    modules = cached_attention(loaded.model)
    if not modules:
        raise CalibscopeError(f"{loaded.info.name} has no attention module with a KV cache that calibscope can find (an "
                              "*Attention module with key and value projections and a cache argument).")
    stats: dict[str, dict[str, CachedTensorStats]] = {}
    current: dict = {}  # the batch's attention mask, and its tokens on each device that caches

    def tap(name: str):
        def observe(keys: torch.Tensor, values: torch.Tensor):
            if name not in stats:
                stats[name] = {tensor: CachedTensorStats.empty(keys.shape[1], keys.device) for tensor in TENSORS}
            if keys.device not in current:  # a model split over devices: the batch's tokens moved once per device
                current[keys.device] = CachedTokens.of(current["mask"], keys.device)
            stats[name]["key"].update(keys, current[keys.device])
            stats[name]["value"].update(values, current[keys.device])
            return keys, values
        return observe

    batches = calibration.batch_indices(batch_size)
    working = batch_working_bytes(loaded, min(batch_size, len(calibration)), int(calibration.lengths.max()))
    with guard.current().reserve_memory("Collecting the KV cache's statistics", working), loaded.lock, \
            torch.inference_mode(), tapping_kv({module: tap(name) for name, module in modules.items()}):
        for number, rows in enumerate(batches):
            ids, mask = calibration.pad(rows)
            current.clear()
            current["mask"] = mask
            # positions among the real tokens, as generation gives them: left padding shifts no rotary position
            inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": token_positions(mask).clamp(min=0)}
            headless_forward(loaded.model, {key: value.to(loaded.device) for key, value in inputs.items()})
            progress((number + 1) / len(batches), f"KV cache: batch {number + 1} of {len(batches)}")
    first = next(iter(stats.values()))["key"] if stats else None
    meta = {"calibration_sha256": calibration.manifest.token_sha256, "tokens": int(calibration.lengths.sum()),
            "sequences": len(calibration), "kv_heads": int(first.absmax.numel()) if first is not None else 0,
            "position_edges": list(POSITION_EDGES)}
    return KVReport({name: {tensor: stats[name][tensor].cpu() for tensor in TENSORS} for name in modules if name in stats}, meta)
