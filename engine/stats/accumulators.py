"""ActivationAccumulator: streaming statistics of one activation tensor, per channel and per tensor.

Follows the observer contract: ``update(x, tokens)`` adds a batch of real (non-padding) tokens,
``merge(other)`` adds another accumulator's data, ``result()`` normalizes only when read, so the
result does not depend on batch size or order: ranges, counts, histograms (hence percentiles) are
bit-identical however the data is batched; means and deviations are summed in float32 per batch
and float64 across batches (float64 reductions cost 15x on a CPU), so only their rounding differs.
Everything kept is O(channels x bins): memory does not grow with the number of samples.

No update waits for the device: on an accelerator NaN/Inf are handled without asking whether any
is present (a few more elementwise passes, cheap there), and maxima are located for a fixed number
of channels, so every tensor has a size known in advance. On the CPU, where asking costs nothing,
the common all-finite batch takes the shorter path. ``all_reduce`` merges across the ranks of a
``torch.distributed`` group (sums, MIN, MAX; each maximum's location from the lowest rank holding it,
which is where a single process, reading the ranks' contiguous shards in order, would have found it).
"""
from __future__ import annotations

import torch

from engine import scratch
from engine.hooks import TokenIndex
from engine.stats.histogram import LogBins, magnitude_bits, percentiles_from_counts

# Locations are found for at most this many channels per batch: those whose |max| grew the most.
# A channel ranked k-th by its final |max| ranks <= k in the batch that set it (every channel ahead
# of it there has a larger final |max|), so the top LOCATED channels of each tensor, the layer's
# maximum included, always get their true location; others whose max moved get -1 (unknown).
LOCATED = 64
TENSOR_BINS = LogBins(mantissa_bits=5, low_exponent=-24, high_exponent=40)   # 2048 bins, ~2% wide
CHANNEL_BINS = LogBins(mantissa_bits=2, low_exponent=-16, high_exponent=16)  # 128 bins, ~15% wide
# NVFP4 scales each block of 16 consecutive channels of a token: the histogram of those blocks' |max|
# (in TENSOR_BINS) is what its global scale is calibrated on (ModelOpt's headroom method).
BLOCK = 16


def accumulator_bytes(accumulator) -> int:
    """Device memory an accumulator holds (its tensors)."""
    return sum(t.numel() * t.element_size() for t in vars(accumulator).values() if isinstance(t, torch.Tensor))


def all_reduce_count(count: int, device: torch.device, group=None) -> int:
    """A host-side count summed over the ranks (once per block or pass, never per batch)."""
    total = torch.tensor([count], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(total, torch.distributed.ReduceOp.SUM, group)
    return int(total.item())


def add_counts_(counts: torch.Tensor, index: torch.Tensor, bincount: bool | None = None) -> None:
    """counts (any shape, read flat) += how often each flat position occurs in ``index``.

    torch.bincount sizes its output from index.max(), which on an accelerator is a read-back to the
    host: one synchronisation per batch and layer. index_add_ of ones into the histogram that is
    already there never asks. On the CPU nothing waits, and bincount is ~1.4x faster there
    (``bincount``: None chooses by device)."""
    if bincount is None:
        bincount = counts.device.type == "cpu"
    if bincount:
        counts.view(-1).add_(torch.bincount(index, minlength=counts.numel()).to(counts.dtype))
    else:
        ones = torch.ones((), dtype=counts.dtype, device=counts.device).expand(index.numel())
        counts.view(-1).index_add_(0, index, ones)


class ActivationAccumulator:
    FIXED_BYTES = 2 * TENSOR_BINS.count * 8  # the tensor's |x| histogram and its blocks' |max| histogram (int64)

    def __init__(self, channels: int, channel_histograms: bool = True, device: torch.device | str = "cpu",
                 branch_free: bool | None = None) -> None:
        self.channels = channels
        self.device = torch.device(device)
        # None: branch-free wherever a host branch would wait for the device (anything but the CPU)
        self.branch_free = self.device.type != "cpu" if branch_free is None else branch_free
        full = lambda value, dtype=torch.float32: torch.full((channels,), value, dtype=dtype, device=self.device)
        self.min, self.max = full(float("inf")), full(float("-inf"))
        self.sum, self.sum_squares = full(0.0, torch.float64), full(0.0, torch.float64)
        self.finite = full(0, torch.int64)
        self.nan, self.inf = full(0, torch.int64), full(0, torch.int64)
        self.tokens = 0
        self.absmax_row, self.absmax_position = full(-1, torch.int64), full(-1, torch.int64)
        self.tensor_counts = torch.zeros(TENSOR_BINS.count, dtype=torch.int64, device=self.device)
        self.channel_counts = (torch.zeros(channels, CHANNEL_BINS.count, dtype=torch.int32, device=self.device)
                               if channel_histograms else None)
        self.block_counts = (torch.zeros(TENSOR_BINS.count, dtype=torch.int64, device=self.device)
                             if channels % BLOCK == 0 else None)

    @staticmethod
    def bytes_per_channel(channel_histograms: bool) -> int:
        """Memory per channel: min, max (float32), sum, sum of squares (float64), finite, NaN and Inf
        counts and the location of the maximum (int64), and the histogram's int32 bins."""
        return 2 * 4 + 2 * 8 + 3 * 8 + 2 * 8 + (CHANNEL_BINS.count * 4 if channel_histograms else 0)

    # -- update -------------------------------------------------------------------------------
    def update(self, x: torch.Tensor, tokens: TokenIndex) -> None:
        """Add ``x`` [tokens, channels] whose rows are the real tokens described by ``tokens``."""
        if x.shape[0] == 0:
            return
        x = scratch.as_float32(x)
        self.tokens += x.shape[0]
        if self.branch_free:
            low, high, finite_x, stand_ins = self._split_non_finite(x)
            batch_sum = finite_x.sum(0)
        else:
            batch_sum = x.sum(0)
            stand_ins = None
            if bool(torch.isfinite(batch_sum).all()):  # a host branch: free on the CPU
                low, high, finite_x = x.amin(0), x.amax(0), x
                self.finite += x.shape[0]
            else:  # rare: NaN or Inf present; count them, keep Inf in min/max, drop both from the rest
                low, high, finite_x, stand_ins = self._split_non_finite(x)
                batch_sum = finite_x.sum(0)
        self._track_absmax(x, low, high, tokens)
        torch.minimum(self.min, low, out=self.min)
        torch.maximum(self.max, high, out=self.max)
        self.sum += batch_sum
        squares = torch.mul(finite_x, finite_x, out=scratch.take("squares", finite_x.shape, torch.float32, finite_x.device))
        self.sum_squares += squares.sum(0)
        self._histogram(finite_x, stand_ins)
        # each token's blocks of 16 channels: their |max| (a block with NaN/Inf: its finite part)
        if self.block_counts is not None:
            block_max = finite_x.view(finite_x.shape[0], -1, BLOCK).abs().amax(-1)
            bits = magnitude_bits(block_max)
            bits >>= TENSOR_BINS.shift
            add_counts_(self.block_counts, TENSOR_BINS.index_of_shifted_(bits).view(-1))

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
        # Only channels whose |max| grew need a new location, and only the LOCATED that grew most
        # (see LOCATED): a gather of a fixed number of columns and an argmax, not one over the whole
        # batch. Channels that grew beyond those become unknown (-1). On a tie the first seen stays.
        batch_absmax = torch.maximum(high, -low)
        grown = batch_absmax > torch.maximum(self.max, -self.min)
        top = torch.where(grown, batch_absmax, -1.0).topk(min(LOCATED, self.channels)).indices
        located = grown[top]
        unknown = grown.index_fill(0, top, False)
        self.absmax_row.masked_fill_(unknown, -1)
        self.absmax_position.masked_fill_(unknown, -1)
        where = torch.nan_to_num(x.index_select(1, top), nan=0.0).abs().argmax(0)
        self.absmax_row[top] = torch.where(located, tokens.rows[where], self.absmax_row[top])
        self.absmax_position[top] = torch.where(located, tokens.positions[where], self.absmax_position[top])

    def _histogram(self, finite_x: torch.Tensor, stand_ins: torch.Tensor | None) -> None:
        """Add |x| to the histograms; zeros that stood in for NaN/Inf (bin 0) are taken out again."""
        # Integer work on |x|'s bits, in place where possible: each pass over the data costs ~5 ms
        # per 8M values on a CPU, as much as the reductions above.
        bits = magnitude_bits(finite_x, out=scratch.take("bits", finite_x.shape, torch.int32, finite_x.device))
        bits >>= TENSOR_BINS.shift
        channel_index = (CHANNEL_BINS.index_of_magnitude_bits(bits, TENSOR_BINS.shift,
                                                              scratch.take("channel bins", bits.shape, torch.int32, bits.device))
                         if self.channel_counts is not None else None)
        tensor_index = TENSOR_BINS.index_of_shifted_(bits)
        add_counts_(self.tensor_counts, tensor_index.view(-1))
        if stand_ins is not None:
            self.tensor_counts[0] -= stand_ins.sum()
        if channel_index is None:
            return
        channel_index += torch.arange(self.channels, dtype=torch.int32, device=self.device) * CHANNEL_BINS.count
        add_counts_(self.channel_counts, channel_index.view(-1))
        if stand_ins is not None:
            self.channel_counts[:, 0] -= stand_ins.to(self.channel_counts.dtype)

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
        if self.block_counts is not None:
            self.block_counts = self.block_counts + other.block_counts
        if self.channel_counts is not None and other.channel_counts is not None:
            self.channel_counts = self.channel_counts + other.channel_counts
        else:
            self.channel_counts = None
        self.tokens += other.tokens
        return self

    def all_reduce(self, group=None) -> ActivationAccumulator:
        """Merge the same accumulator of every rank of ``group`` into each, in place; returns self."""
        dist = torch.distributed
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        local = torch.maximum(self.max, -self.min)
        dist.all_reduce(self.min, dist.ReduceOp.MIN, group)
        dist.all_reduce(self.max, dist.ReduceOp.MAX, group)
        holder = torch.where(local == torch.maximum(self.max, -self.min), rank, world)
        dist.all_reduce(holder, dist.ReduceOp.MIN, group)  # the lowest rank that holds each maximum
        for name in ("absmax_row", "absmax_position"):
            located = torch.where(holder == rank, getattr(self, name), -1)
            dist.all_reduce(located, dist.ReduceOp.MAX, group)
            setattr(self, name, located)
        for name in ("sum", "sum_squares", "finite", "nan", "inf", "tensor_counts", "channel_counts", "block_counts"):
            if getattr(self, name) is not None:
                dist.all_reduce(getattr(self, name), dist.ReduceOp.SUM, group)
        self.tokens = all_reduce_count(self.tokens, self.device, group)
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
        if self.block_counts is not None:
            out["block_counts"] = self.block_counts
        if self.channel_counts is not None:
            out["channel_percentiles"] = percentiles_from_counts(
                self.channel_counts.cpu(), CHANNEL_BINS, quantiles, absmax.cpu()).T.contiguous()  # [Q, C]
        return {name: value.cpu() for name, value in out.items()}
