"""ActivationAccumulator: streaming statistics of one activation tensor, per channel and per tensor.

Follows the observer contract: ``update(x, tokens)`` adds a batch of real (non-padding) tokens,
``merge(other)`` adds another accumulator's data, ``result()`` normalizes only when read, so the
result does not depend on batch size or order: ranges, counts, histograms (hence percentiles) are
bit-identical however the data is batched; means and deviations are summed in float32 per batch
and float64 across batches (float64 reductions cost 15x on a CPU), so only their rounding differs. Everything kept is O(channels x bins): memory does
not grow with the number of samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.stats.histogram import LogBins, magnitude_bits, percentiles_from_counts

# Locations are found for at most this many channels per batch: those whose |max| grew the most.
# A channel ranked k-th by its final |max| ranks <= k in the batch that set it (every channel ahead
# of it there has a larger final |max|), so the top LOCATED channels of each tensor, the layer's
# maximum included, always get their true location; others whose max moved get -1 (unknown).
LOCATED = 64
TENSOR_BINS = LogBins(mantissa_bits=5, low_exponent=-24, high_exponent=40)   # 2048 bins, ~2% wide
CHANNEL_BINS = LogBins(mantissa_bits=2, low_exponent=-16, high_exponent=16)  # 128 bins, ~15% wide


@dataclass(frozen=True)
class TokenIndex:
    """For each captured token: its calibration row and its position in that row (padding excluded)."""

    rows: torch.Tensor
    positions: torch.Tensor


class ActivationAccumulator:
    def __init__(self, channels: int, channel_histograms: bool = True, device: torch.device | str = "cpu") -> None:
        self.channels = channels
        self.device = torch.device(device)
        full = lambda value, dtype=torch.float32: torch.full((channels,), value, dtype=dtype, device=self.device)  # noqa: E731
        self.min, self.max = full(float("inf")), full(float("-inf"))
        self.sum, self.sum_squares = full(0.0, torch.float64), full(0.0, torch.float64)
        self.finite = full(0, torch.int64)
        self.nan, self.inf = full(0, torch.int64), full(0, torch.int64)
        self.tokens = 0
        self.absmax_row, self.absmax_position = full(-1, torch.int64), full(-1, torch.int64)
        self.tensor_counts = torch.zeros(TENSOR_BINS.count, dtype=torch.int64, device=self.device)
        self.channel_counts = (torch.zeros(channels, CHANNEL_BINS.count, dtype=torch.int32, device=self.device)
                               if channel_histograms else None)

    # -- update -------------------------------------------------------------------------------
    def update(self, x: torch.Tensor, tokens: TokenIndex) -> None:
        """Add ``x`` [tokens, channels] whose rows are the real tokens described by ``tokens``."""
        if x.shape[0] == 0:
            return
        x = x.float()
        self.tokens += x.shape[0]
        batch_sum = x.sum(0)
        stand_ins = None
        if bool(torch.isfinite(batch_sum).all()):
            low, high, finite_x = x.amin(0), x.amax(0), x
            self.finite += x.shape[0]
        else:  # rare: NaN or Inf present; count them, keep Inf in min/max, drop both from the rest
            low, high, finite_x, stand_ins = self._split_non_finite(x)
            batch_sum = finite_x.sum(0)
        self._track_absmax(x, low, high, tokens)
        torch.minimum(self.min, low, out=self.min)
        torch.maximum(self.max, high, out=self.max)
        self.sum += batch_sum
        self.sum_squares += (finite_x * finite_x).sum(0)
        self._histogram(finite_x, stand_ins)

    def _split_non_finite(self, x: torch.Tensor):
        """min/max with NaN ignored, x with NaN/Inf replaced by 0, and how many zeros stand in per channel."""
        nan, inf = torch.isnan(x), torch.isinf(x)
        bad = nan | inf
        self.nan += nan.sum(0)
        self.inf += inf.sum(0)
        stand_ins = bad.sum(0)
        self.finite += x.shape[0] - stand_ins
        low = torch.where(nan, float("inf"), x).amin(0)
        high = torch.where(nan, float("-inf"), x).amax(0)
        return low, high, torch.where(bad, 0.0, x), stand_ins

    def _track_absmax(self, x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, tokens: TokenIndex) -> None:
        # Only channels whose |max| grew need a new location, and only the LOCATED largest of them
        # (see LOCATED): a small gather and argmax instead of one over the whole batch.
        # On a tie the first seen stays.
        batch_absmax = torch.maximum(high, -low)
        running_absmax = torch.maximum(self.max, -self.min)
        grown = torch.nonzero(batch_absmax > running_absmax).flatten()
        if grown.numel() == 0:
            return
        if grown.numel() > LOCATED:
            self.absmax_row[grown] = -1
            self.absmax_position[grown] = -1
            grown = grown[batch_absmax[grown].topk(LOCATED).indices]
        magnitudes = torch.nan_to_num(x[:, grown], nan=0.0).abs()
        where = magnitudes.argmax(0)
        self.absmax_row[grown] = tokens.rows.to(self.device)[where]
        self.absmax_position[grown] = tokens.positions.to(self.device)[where]

    def _histogram(self, finite_x: torch.Tensor, stand_ins: torch.Tensor | None) -> None:
        """Add |x| to the histograms; zeros that stood in for NaN/Inf (bin 0) are taken out again."""
        # Integer work on |x|'s bits, in place where possible: each pass over the data costs ~5 ms
        # per 8M values on a CPU, as much as the reductions above.
        bits = magnitude_bits(finite_x)
        bits >>= TENSOR_BINS.shift
        channel_index = (CHANNEL_BINS.index_of_magnitude_bits(bits, shifted_by=TENSOR_BINS.shift)
                         if self.channel_counts is not None else None)
        tensor_index = TENSOR_BINS.index_of_shifted_(bits)
        counts = torch.bincount(tensor_index.view(-1), minlength=TENSOR_BINS.count)
        if stand_ins is not None:
            counts[0] -= stand_ins.sum()
        self.tensor_counts += counts
        if channel_index is None:
            return
        channel_index += torch.arange(self.channels, dtype=torch.int32, device=self.device) * CHANNEL_BINS.count
        per_channel = torch.bincount(channel_index.view(-1), minlength=self.channels * CHANNEL_BINS.count)
        per_channel = per_channel.view(self.channels, CHANNEL_BINS.count)
        if stand_ins is not None:
            per_channel[:, 0] -= stand_ins
        self.channel_counts += per_channel.to(torch.int32)

    # -- merge and read -------------------------------------------------------------------------
    def merge(self, other: ActivationAccumulator) -> ActivationAccumulator:
        """Add ``other``'s data into this accumulator (same channels); returns self."""
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {other.channels} channels into {self.channels}")
        takes = torch.maximum(other.max, -other.min) > torch.maximum(self.max, -self.min)
        self.absmax_row = torch.where(takes, other.absmax_row, self.absmax_row)
        self.absmax_position = torch.where(takes, other.absmax_position, self.absmax_position)
        torch.minimum(self.min, other.min, out=self.min)
        torch.maximum(self.max, other.max, out=self.max)
        for name in ("sum", "sum_squares", "finite", "nan", "inf", "tensor_counts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if self.channel_counts is not None and other.channel_counts is not None:
            self.channel_counts = self.channel_counts + other.channel_counts
        else:
            self.channel_counts = None
        self.tokens += other.tokens
        return self

    def result(self, quantiles: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-channel and per-tensor statistics (CPU tensors). quantiles are fractions, e.g. 0.999."""
        finite = self.finite.double().clamp(min=1)
        mean = self.sum / finite
        variance = (self.sum_squares / finite - mean * mean).clamp(min=0)  # population variance
        absmax = torch.maximum(self.max, -self.min)
        total = self.finite.sum().double().clamp(min=1)
        tensor_mean = self.sum.sum() / total
        tensor_variance = (self.sum_squares.sum() / total - tensor_mean**2).clamp(min=0)
        out = {
            "min": self.min, "max": self.max, "absmax": absmax, "mean": mean, "std": variance.sqrt(),
            "count": self.finite, "nan": self.nan, "inf": self.inf,
            "absmax_row": self.absmax_row, "absmax_position": self.absmax_position,
            "tensor_counts": self.tensor_counts,
            "tensor_percentiles": percentiles_from_counts(self.tensor_counts.cpu(), TENSOR_BINS, quantiles, absmax.max().cpu()),
            "tensor_mean": tensor_mean, "tensor_std": tensor_variance.sqrt(),
        }
        if self.channel_counts is not None:
            out["channel_percentiles"] = percentiles_from_counts(
                self.channel_counts.cpu(), CHANNEL_BINS, quantiles, absmax.cpu()).T.contiguous()  # [Q, C]
        return {name: value.cpu() for name, value in out.items()}
