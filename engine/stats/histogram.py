"""Log-bucketed histograms of |x|, indexed straight from the float's bits.

A float32's bits are sign | 8 exponent bits | 23 mantissa bits. Shifting |x|'s bits right by
``23 - m`` keeps the exponent and the top ``m`` mantissa bits: a bin index in which every octave
[2^e, 2^(e+1)) is split into 2^m equal bins, so each bin is 1/2^m to 1/2^(m+1) of its values wide
(3%-1.6% for m = 5). Unlike linear bins whose range grows by re-binning (torch.ao's
HistogramObserver), the bins are the same for all data: two histograms merge by adding counts,
exactly, memory is fixed, and tail percentiles of heavy-tailed activations get the same relative
precision as the bulk. Values below 2^low_exponent share the first bin; values at or above
2^high_exponent share the last (the exact maximum is tracked elsewhere and clamps the estimate).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT32_EXPONENT_BIAS = 127
MANTISSA_BITS = 23


@dataclass(frozen=True)
class LogBins:
    """The bin layout: ``mantissa_bits`` sub-bins per octave over octaves [low_exponent, high_exponent)."""

    mantissa_bits: int = 5
    low_exponent: int = -24
    high_exponent: int = 40

    @property
    def per_octave(self) -> int:
        return 1 << self.mantissa_bits

    @property
    def count(self) -> int:
        return (self.high_exponent - self.low_exponent) * self.per_octave

    @property
    def shift(self) -> int:
        """How far |x|'s bits are shifted right to keep the exponent and ``mantissa_bits`` bits."""
        return MANTISSA_BITS - self.mantissa_bits

    def index_of_magnitude_bits(self, bits: torch.Tensor, shifted_by: int = 0, out: torch.Tensor | None = None) -> torch.Tensor:
        """Bin index from |x|'s bits already shifted right by ``shifted_by`` (into ``out``, or a new int32 tensor)."""
        return self.index_of_shifted_(torch.bitwise_right_shift(bits, self.shift - shifted_by, out=out))

    def index_of_shifted_(self, shifted: torch.Tensor) -> torch.Tensor:
        """Turn bits shifted by ``self.shift`` into bin indices, in place."""
        first = (FLOAT32_EXPONENT_BIAS + self.low_exponent) << self.mantissa_bits
        return shifted.sub_(first).clamp_(0, self.count - 1)

    def edges(self) -> torch.Tensor:
        """Lower edge of every bin, plus the upper edge of the last (float64, count + 1 values)."""
        bins = torch.arange(self.count + 1, dtype=torch.float64, device="cpu")
        exponent = self.low_exponent + torch.div(bins, self.per_octave, rounding_mode="floor")
        fraction = 1.0 + torch.remainder(bins, self.per_octave) / self.per_octave
        edges = torch.pow(2.0, exponent) * fraction
        edges[0] = 0.0  # the first bin also holds everything below 2^low_exponent
        return edges


def magnitude_bits(values: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The bits of |x| as int32 (into ``out``, or a new tensor): the float32 bits with the sign bit
    cleared (bf16/fp16 widen exactly)."""
    return torch.bitwise_and(values.float().contiguous().view(torch.int32), 0x7FFFFFFF, out=out)


def tensor_histogram(values: torch.Tensor, bins: LogBins) -> torch.Tensor:
    """Counts of |values| in ``bins`` (int64; NaN and ±Inf land in the last bin)."""
    bits = magnitude_bits(values)
    bits >>= bins.shift
    return torch.bincount(bins.index_of_shifted_(bits).view(-1), minlength=bins.count)


def percentiles_from_counts(counts: torch.Tensor, bins: LogBins, quantiles: torch.Tensor,
                            maximum: torch.Tensor) -> torch.Tensor:
    """Quantiles (0..1) of |x| from histogram counts, interpolating linearly inside the bin.

    The rank of quantile q among n values is q * (n - 1) + 1 (1-based), the convention of
    torch.quantile and numpy's default. counts: [..., bins] (one histogram per leading index);
    maximum: [...] exact max |x|, which the estimate never exceeds. Returns [..., len(quantiles)];
    NaN where a histogram is empty.
    """
    counts = counts.to(torch.float64)
    total = counts.sum(-1, keepdim=True)
    cumulative = counts.cumsum(-1)
    edges = bins.edges()
    targets = quantiles.to(torch.float64) * (total - 1).clamp(min=0) + 1  # [..., Q] 1-based rank
    # first bin whose cumulative count reaches the target rank
    index = torch.searchsorted(cumulative, targets.contiguous(), right=False).clamp_(max=bins.count - 1)
    before = torch.where(index > 0, cumulative.gather(-1, (index - 1).clamp(min=0)), torch.zeros_like(targets))
    inside = counts.gather(-1, index)
    fraction = torch.where(inside > 0, (targets - before) / inside, torch.zeros_like(targets)).clamp_(0, 1)
    low, high = edges[index], edges[index + 1]
    estimate = low + fraction * (high - low)
    estimate = torch.minimum(estimate, maximum.to(torch.float64).unsqueeze(-1))
    return torch.where(total > 0, estimate, torch.full_like(estimate, float("nan")))
