"""Sample-count sensitivity: how much do ranges, percentiles and Hessians still move between n
samples and all N, and how much does it depend on which n samples you drew?

Several random orders (shuffles) of the set; for each, the first n samples for every chosen count
(1, 2, 4, ..., N by default). One forward pass serves every shuffle: each sample's tensors are
charged to the prefixes it belongs to in each order (engine.stats.prefixes), so the sweep costs one
statistics-and-Hessians collection, not one per shuffle. Per distinct input and block, once the block
is finished, the changes relative to the full set:

    |max_n − max_N| / max_N,  |p_n − p_N| / p_N,  ‖H_n − H_N‖_F / ‖H_N‖_F with H = Σ XᵀX / tokens,

the change of NVFP4's global scale 448 · 6 / amax, |amax_N / amax_n − 1|, with amax the |max|
(minmax) or ModelOpt's headroom over the 16-channel blocks' maxima, and of AWQ's mean |x| per
channel, ‖x̄_n − x̄_N‖ / ‖x̄_N‖ (its scales are x̄^r over a weight term). An int8 or FP8 static scale
from the |max| moves exactly as the |max| does.

The spread over shuffles gives each curve its band. Hessians are held block by block: the largest
block's Σ XᵀX once per (shuffle, count) in ``snapshot_dtype``, plus the block's totals.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from engine.errors import SpecError
from engine.hooks import Side, select_layers
from engine.models import LAYER_KINDS, LayerKind, LoadedModel, block_of
from engine.progress import Progress, no_progress
from engine.runner import Execution, FinishedBlock, PassRequest, run_pass
from engine.sampling import CalibrationSet
from engine.specs import choice
from engine.stats import PrefixAccumulator, hessian_megabytes, layer_kinds, prefix_buckets

SNAPSHOT_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class SweepSpec:
    """counts: sample counts to snapshot at (empty: powers of two up to N, and N); shuffles: how
    many random orders (all from the same pass); hessians: also snapshot Σ XᵀX (memory: the
    block's Hessians once per shuffle and count below N, in ``snapshot_dtype``); keep_totals: keep
    the whole set's Σ XᵀX of every input (a full Hessian collection's worth of memory), from which
    engine.stats.hessian_report.hessians_from_sums makes the Hessian report without another pass."""

    counts: tuple[int, ...] = ()
    shuffles: int = 3
    seed: int = 0
    percentile: float = 99.99
    hessians: bool = True
    snapshot_dtype: str = "bfloat16"
    layer_types: tuple[LayerKind, ...] = LAYER_KINDS
    name_pattern: str = ""
    batch_size: int = 8
    execution: Execution = Execution.AUTO
    keep_totals: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", tuple(sorted({int(c) for c in self.counts})))
        object.__setattr__(self, "layer_types", layer_kinds(self.layer_types))
        object.__setattr__(self, "execution", choice(Execution, self.execution, "execution"))
        if any(c < 1 for c in self.counts):
            raise SpecError(f"counts {self.counts} must be positive sample counts.")
        if self.shuffles < 1 or self.batch_size < 1:
            raise SpecError("shuffles and batch_size must be at least 1.")
        if not 0 < self.percentile < 100:
            raise SpecError(f"percentile={self.percentile} must be in (0, 100), e.g. 99.99.")
        if self.snapshot_dtype not in SNAPSHOT_DTYPES:
            raise SpecError(f"snapshot_dtype must be one of {', '.join(SNAPSHOT_DTYPES)}.")

    def resolved_counts(self, total: int) -> list[int]:
        if self.counts and self.counts[-1] > total:
            raise SpecError(f"Counts go up to {self.counts[-1]} but the set has {total} samples; build a larger set "
                            "or lower the counts.")
        if self.counts:
            return list(self.counts) if self.counts[-1] == total else [*self.counts, total]
        powers = [1 << k for k in range(total.bit_length()) if (1 << k) < total]
        return [*powers, total]


METRICS = ("absmax", "percentile", "absmax_change", "percentile_change", "hessian_change", "nvfp4_minmax_change",
           "nvfp4_headroom_change", "awq_mean_change")


def _change_rows(key: str, changes: dict[str, np.ndarray], counts: list[int]) -> list[dict]:
    """One row per (shuffle, count) of one input, from its [shuffles, counts] arrays."""
    return [{"shuffle": shuffle, "count": count, "key": key,
             **{metric: float(changes[metric][shuffle, k]) for metric in METRICS if metric in changes}}
            for shuffle in range(changes["absmax"].shape[0]) for k, count in enumerate(counts)]


@dataclass
class SweepResult:
    """rows: one per (shuffle, count, input) with absolute values and relative changes to all N."""

    rows: pd.DataFrame
    counts: list[int]
    meta: dict
    totals: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)  # keep_totals: Σ XᵀX, tokens
    shared: dict[str, str] = field(default_factory=dict)  # layer -> the layer whose input it shares

    def curves(self, metric: str) -> pd.DataFrame:
        """Per count: the median over inputs of ``metric`` in each shuffle, then mean / min / max
        over shuffles (the band)."""
        per_shuffle = self.rows.groupby(["shuffle", "count"])[metric].median().unstack("shuffle")
        return pd.DataFrame({"count": per_shuffle.index, "mean": per_shuffle.mean(axis=1).to_numpy(),
                             "low": per_shuffle.min(axis=1).to_numpy(), "high": per_shuffle.max(axis=1).to_numpy()})


def sweep(loaded: LoadedModel, calibration: CalibrationSet, spec: SweepSpec = SweepSpec(),
          progress: Progress = no_progress) -> SweepResult:
    """Snapshots at every count of every shuffle from one pass; changes relative to the full set."""
    started = time.perf_counter()
    counts = spec.resolved_counts(len(calibration))
    layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, False)
    orders = [np.random.default_rng(spec.seed + shuffle).permutation(len(calibration)) for shuffle in range(spec.shuffles)]
    buckets = prefix_buckets(orders, counts)
    dtype = SNAPSHOT_DTYPES[spec.snapshot_dtype]
    copies = spec.shuffles * (len(counts) - 1)
    rows, totals = [], {}

    def finish(block: FinishedBlock) -> None:  # each block's rows as soon as it is done; its sums freed
        for key in sorted(block.accumulators):
            accumulator = block.accumulators.pop(key)
            rows.extend(_change_rows(key, accumulator.changes(spec.percentile / 100.0), counts))
            if spec.keep_totals and spec.hessians:
                totals[key] = (accumulator.total_xtx, accumulator.total_tokens)

    request = PassRequest(layers, (Side.INPUT,),
                          lambda channels, device: PrefixAccumulator(channels, device, buckets, spec.hessians, dtype),
                          state_bytes=lambda layer: layer.in_features**2 * (4 + copies * dtype.itemsize) if spec.hessians else 0,
                          batch_size=spec.batch_size, after_block=finish, execution=_execution(spec))
    result = run_pass(loaded, calibration, request, progress)
    meta = {"model": loaded.info.name, "samples": len(calibration), "shuffles": spec.shuffles,
            "percentile": spec.percentile, "inputs": len({r["key"] for r in rows}),
            "calibration_sha256": calibration.manifest.token_sha256, "seconds": round(time.perf_counter() - started, 2)}
    return SweepResult(pd.DataFrame(rows), counts, meta, totals, dict(result.shared))


def _execution(spec: SweepSpec) -> Execution:
    """Hessian snapshots of every block at once would be (shuffles x counts) copies of all of them:
    unless asked otherwise, they are held one block at a time."""
    return Execution.BLOCKWISE if spec.hessians and spec.execution is Execution.AUTO else spec.execution


def snapshot_megabytes(loaded: LoadedModel, spec: SweepSpec, samples: int) -> float:
    """Memory the Hessian sums take while a block is measured: per distinct input, the total in
    float32 and one copy per (shuffle, count below N) in the snapshot dtype; the largest block's
    (every block's at once if the sweep runs whole-model); plus every total kept (keep_totals)."""
    if not spec.hessians:
        return 0.0
    layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, False)
    copies = 1 + spec.shuffles * (len(spec.resolved_counts(samples)) - 1) * SNAPSHOT_DTYPES[spec.snapshot_dtype].itemsize / 4
    kept = hessian_megabytes(layers) if spec.keep_totals else 0.0
    if _execution(spec) is Execution.WHOLE:
        return kept + hessian_megabytes(layers) * copies
    by_block = defaultdict(list)
    for layer in layers:
        by_block[block_of(layer.name)].append(layer)
    return kept + max(hessian_megabytes(group) for group in by_block.values()) * copies
