"""Statistics of nested sample prefixes, for several sample orders, from one pass.

A sample-count sweep asks: in order s, what are |max|, a percentile, AWQ's mean |x| per channel and
Σ XᵀX of the first n samples,
for each n in ``counts``? A sample's activations do not depend on the order, so one forward pass
serves every order: each sample is charged to its *bucket* in each order, the k-th bucket holding the
samples first counted at ``counts[k]``. Prefix n_k of order s is then the sum of buckets 0..k. The last
prefix is the whole set in every order, so the last bucket is never stored: it is the total.

Rows of a batch that fall in the same bucket in every order are one group: one GEMM and one histogram
per group, whose results are added to the group's buckets. Grouping uses the rows and token counts
the router knows on the host, so no update waits for the device. Σ XᵀX costs one GEMM over the data,
as a plain Hessian collection does, however many orders there are; the adds are d² per group and order.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from engine.hooks import TokenIndex
from engine.stats.accumulators import BLOCK, TENSOR_BINS
from engine.stats.blocks import headroom_amax
from engine.stats.hessian import add_xtx_
from engine.stats.histogram import percentiles_from_counts, tensor_histogram


def prefix_buckets(orders: list[np.ndarray], counts: list[int]) -> np.ndarray:
    """[orders, samples]: for each order and calibration row, the index k of the first count that
    includes the row (the row at 0-based position p is first counted at the smallest count > p)."""
    buckets = np.empty((len(orders), len(orders[0])), dtype=np.int64)
    for s, order in enumerate(orders):
        buckets[s, order] = np.searchsorted(np.asarray(counts), np.arange(len(order)), side="right")
    return buckets


class PrefixAccumulator:
    """Per-(order, bucket) |max|, |x| histogram, Σ|x| per channel, tokens and (optionally) Σ XᵀX of one
    input, and the totals. ``buckets``: from :func:`prefix_buckets`; bucket ``stored`` (the last) is kept only in the
    totals. Σ XᵀX per bucket in ``dtype`` (each add is an exact float32 group sum rounded once)."""

    def __init__(self, channels: int, device: torch.device, buckets: np.ndarray, hessian: bool,
                 dtype: torch.dtype = torch.float32) -> None:
        self.buckets = buckets
        orders, self.stored = buckets.shape[0], int(buckets.max())
        shape = (orders, self.stored)
        self.absmax = torch.zeros(shape, dtype=torch.float32, device=device)
        self.counts = torch.zeros(*shape, TENSOR_BINS.count, dtype=torch.int64, device=device)
        self.tokens = np.zeros(shape, dtype=np.int64)
        self.total_tokens = 0
        self.total_absmax = torch.zeros((), dtype=torch.float32, device=device)
        self.absolute = torch.zeros(*shape, channels, dtype=torch.float64, device=device)  # Σ|x| per channel: AWQ's x̄
        self.total_absolute = torch.zeros(channels, dtype=torch.float64, device=device)
        self.total_counts = torch.zeros(TENSOR_BINS.count, dtype=torch.int64, device=device)
        # NVFP4's blocks of 16 channels: the histogram of their |max| per bucket (its headroom calibration)
        self.blocks = channels % BLOCK == 0
        self.block_counts = torch.zeros(*shape, TENSOR_BINS.count, dtype=torch.int64, device=device) if self.blocks else None
        self.total_block_counts = torch.zeros(TENSOR_BINS.count, dtype=torch.int64, device=device) if self.blocks else None
        self.xtx = torch.zeros(*shape, channels, channels, dtype=dtype, device=device) if hessian else None
        self.total_xtx = torch.zeros(channels, channels, dtype=torch.float32, device=device) if hessian else None
        self._buffer: torch.Tensor | None = None

    def update(self, x: torch.Tensor, tokens: TokenIndex) -> None:
        for signature, parts in self._groups(x, tokens).items():
            group = parts[0] if len(parts) == 1 else torch.cat(parts)
            magnitude = group.abs()
            absmax, counts = magnitude.amax().float(), tensor_histogram(group, TENSOR_BINS)
            absolute = magnitude.sum(0, dtype=torch.float64)
            self.total_absolute += absolute
            blocks = tensor_histogram(group.view(group.shape[0], -1, BLOCK).abs().amax(-1), TENSOR_BINS) if self.blocks else None
            self.total_absmax = torch.maximum(self.total_absmax, absmax)
            self.total_counts += counts
            if blocks is not None:
                self.total_block_counts += blocks
            self.total_tokens += group.shape[0]
            charged = [(order, bucket) for order, bucket in enumerate(signature) if bucket < self.stored]
            if self.xtx is not None and not charged:
                add_xtx_(self.total_xtx, group)  # only in the whole set: straight into the total
            elif self.xtx is not None:
                xtx = add_xtx_(self._scratch(), group, beta=0)
                self.total_xtx += xtx
            for order, bucket in charged:
                self.absmax[order, bucket] = torch.maximum(self.absmax[order, bucket], absmax)
                self.counts[order, bucket] += counts
                self.absolute[order, bucket] += absolute
                if blocks is not None:
                    self.block_counts[order, bucket] += blocks
                self.tokens[order, bucket] += group.shape[0]
                if self.xtx is not None:
                    self.xtx[order, bucket] += xtx

    def _scratch(self) -> torch.Tensor:
        """One d×d buffer for a group's Σ XᵀX, reused: a fresh one per group costs page faults."""
        if self._buffer is None:
            self._buffer = torch.empty_like(self.total_xtx)
        return self._buffer

    def _groups(self, x: torch.Tensor, tokens: TokenIndex) -> dict[tuple[int, ...], list[torch.Tensor]]:
        """The batch's rows (contiguous in ``x``) grouped by their bucket in every order."""
        groups = defaultdict(list)
        for row, part in zip(tokens.batch_rows, x.split(list(tokens.lengths))):
            if part.shape[0]:
                groups[tuple(int(b) for b in self.buckets[:, row])].append(part)
        return groups

    def all_reduce(self, group=None) -> PrefixAccumulator:
        """Sum (max for |max|) over every rank of ``group``, in place; returns self."""
        dist = torch.distributed
        for tensor in (self.counts, self.total_counts, self.absolute, self.total_absolute,
                       *(t for t in (self.block_counts, self.total_block_counts, self.xtx, self.total_xtx) if t is not None)):
            if tensor.dtype in (torch.bfloat16, torch.float16):  # summed in float32: gloo has no half sums
                wide = tensor.float()
                dist.all_reduce(wide, dist.ReduceOp.SUM, group)
                tensor.copy_(wide)
            else:
                dist.all_reduce(tensor, dist.ReduceOp.SUM, group)
        for tensor in (self.absmax, self.total_absmax):
            dist.all_reduce(tensor, dist.ReduceOp.MAX, group)
        counts = torch.tensor([self.total_tokens, *self.tokens.ravel()], dtype=torch.int64, device=self.absmax.device)
        dist.all_reduce(counts, dist.ReduceOp.SUM, group)  # host counts: once per block, never per batch
        self.total_tokens, self.tokens = int(counts[0]), counts[1:].cpu().numpy().reshape(self.tokens.shape)
        return self

    def changes(self, quantile: float) -> dict[str, np.ndarray]:
        """[orders, counts] arrays for the prefix through each bucket (the last column: the whole
        set): absmax, the ``quantile`` percentile of |x|, and their changes relative to the whole
        set; AWQ's x̄ (mean |x| per channel, what its scales are powers of): ‖x̄_n − x̄_N‖ / ‖x̄_N‖; with
        Hessians, ‖H_n − H_N‖_F / ‖H_N‖_F with H = Σ XᵀX / tokens."""
        orders = self.tokens.shape[0]
        absmax = torch.cat([self.absmax.cummax(1).values, self.total_absmax.expand(orders, 1)], 1).cpu()
        counts = torch.cat([self.counts.cumsum(1), self.total_counts.expand(orders, 1, -1)], 1).cpu()
        q = torch.tensor([quantile], dtype=torch.float64, device="cpu")
        percentile = percentiles_from_counts(counts, TENSOR_BINS, q, absmax)[..., 0]
        out = {"absmax": absmax.double().numpy(), "percentile": percentile.numpy()}
        out["absmax_change"] = _relative(out["absmax"])
        out["percentile_change"] = _relative(out["percentile"])
        # NVFP4's global scale is 448 · 6 / amax: its change relative to the whole set's is |amax_N / amax_n - 1|
        out["nvfp4_minmax_change"] = _inverse_relative(out["absmax"])
        out["awq_mean_change"] = self._mean_changes()
        if self.blocks:
            blocks = torch.cat([self.block_counts.cumsum(1), self.total_block_counts.expand(orders, 1, -1)], 1).cpu()
            headroom = np.array([[headroom_amax(blocks[order, k], float(absmax[order, k])) for k in range(blocks.shape[1])]
                                 for order in range(orders)])
            out["nvfp4_headroom_change"] = _inverse_relative(headroom)
        if self.xtx is not None:
            out["hessian_change"] = self._hessian_changes()
        return out

    def _mean_changes(self) -> np.ndarray:
        """‖x̄_n − x̄_N‖ / ‖x̄_N‖ per order and prefix (x̄ = Σ|x| / tokens per channel)."""
        final = self.total_absolute / max(self.total_tokens, 1)
        tokens = torch.as_tensor(np.maximum(self.tokens.cumsum(1), 1), dtype=torch.float64, device=final.device)
        means = self.absolute.cumsum(1) / tokens[..., None]
        changes = torch.linalg.vector_norm(means - final, dim=-1) / torch.linalg.vector_norm(final).clamp(min=1e-30)
        return np.concatenate([changes.cpu().numpy(), np.zeros((len(changes), 1))], 1)

    def _hessian_changes(self) -> np.ndarray:
        """‖A_k/t_k − F‖ = ‖A_k − t_k·F‖ / t_k with A_k the running bucket sum: two d×d buffers
        reused for every prefix (fresh temporaries of this size cost more in page faults than in
        arithmetic on a CPU)."""
        final = self.total_xtx / max(self.total_tokens, 1)
        scale = float(torch.linalg.matrix_norm(final).clamp(min=1e-30))
        running, difference = torch.empty_like(final), torch.empty_like(final)
        tokens = np.maximum(self.tokens.cumsum(1), 1)  # t_k of every prefix
        norms = torch.empty(self.tokens.shape, dtype=torch.float32, device=final.device)
        for order in range(self.tokens.shape[0]):
            running.zero_()
            for bucket in range(self.stored):
                running += self.xtx[order, bucket]
                torch.sub(running, final, alpha=int(tokens[order, bucket]), out=difference)
                norms[order, bucket] = torch.linalg.vector_norm(difference)
        changes = norms.cpu().numpy() / tokens / scale
        return np.concatenate([changes, np.zeros((len(changes), 1))], 1)  # the whole set itself: no change


def _inverse_relative(values: np.ndarray) -> np.ndarray:
    """|v_N / v − 1| per order: the relative change of a scale inversely proportional to v (NaN where v is 0)."""
    final = values[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(values > 0, np.abs(final / values - 1), np.nan)


def _relative(values: np.ndarray) -> np.ndarray:
    """|v − v_N| / v_N per order, v_N the last column (NaN where v_N is 0)."""
    final = values[:, -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(final > 0, np.abs(values - final) / final, np.nan)
