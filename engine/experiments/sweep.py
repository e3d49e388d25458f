"""Sample-count sensitivity in one pass per shuffle: how much do ranges, percentiles and Hessians
still move between n samples and all N?

Each shuffle streams the set once in a random order, cut into batches that end exactly at the
chosen counts (1, 2, 4, ..., N by default); after the batch that completes count n, the running
accumulators are read: per-tensor |max| and a percentile (from the fixed-bin histogram, a few
microseconds), and a copy of each Σ XᵀX (kept on the CPU, bfloat16 by default to halve the
memory; the relative changes it measures are far above bfloat16's 0.4% rounding). At the end the
changes relative to the full set are computed per distinct input:

    |max_n − max_N| / max_N,  |p_n − p_N| / p_N,  ‖H_n − H_N‖_F / ‖H_N‖_F with H = Σ XᵀX / tokens.

Several shuffles give the spread (bands) of each curve: which n samples you happen to draw matters
as much as how many.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from engine.errors import SpecError
from engine.hooks import Side, select_layers
from engine.models import LoadedModel
from engine.models.layers import LAYER_KINDS, LayerKind
from engine.progress import Progress, no_progress, scaled
from engine.runner import Execution, PassRequest, run_pass
from engine.sampling import CalibrationSet
from engine.specs import choice
from engine.stats.accumulators import TENSOR_BINS, ActivationAccumulator
from engine.stats.hessian import HessianAccumulator
from engine.stats.hessian_report import hessian_megabytes
from engine.stats.histogram import percentiles_from_counts
from engine.stats.specs import layer_kinds

SNAPSHOT_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class SweepSpec:
    """counts: sample counts to snapshot at (empty: powers of two up to N, and N); shuffles: how
    many random orders (each one pass); hessians: also snapshot Σ XᵀX (memory: one copy of every
    distinct input's Hessian per count, in ``snapshot_dtype``)."""

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", tuple(sorted(set(int(c) for c in self.counts))))
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


def count_batches(order: list[int], counts: list[int], batch_size: int) -> list[list[int]]:
    """``order`` cut into batches of at most ``batch_size`` rows that never straddle a count."""
    batches, start = [], 0
    for stop in counts:
        while start < stop:
            end = min(start + batch_size, stop)
            batches.append(order[start:end])
            start = end
    return batches


class _Both:
    """Activation statistics (tensor level) and Σ XᵀX of one input from the same tokens."""

    def __init__(self, channels: int, device: torch.device, hessian: bool) -> None:
        self.stats = ActivationAccumulator(channels, channel_histograms=False, device=device)
        self.hessian = HessianAccumulator(channels, torch.float32, device) if hessian else None

    def update(self, x: torch.Tensor, tokens) -> None:
        self.stats.update(x, tokens)
        if self.hessian is not None:
            self.hessian.update(x)

    def snapshot(self, quantile: torch.Tensor, dtype: torch.dtype) -> dict:
        absmax = torch.maximum(self.stats.max, -self.stats.min).max().cpu()
        percentile = percentiles_from_counts(self.stats.tensor_counts.cpu(), TENSOR_BINS, quantile, absmax)[0]
        out = {"absmax": float(absmax), "percentile": float(percentile)}
        if self.hessian is not None:
            out["xtx"] = self.hessian.xtx.to("cpu", dtype, copy=True)
            out["tokens"] = self.hessian.tokens
        return out


def _relative(value: float, final: float) -> float:
    return abs(value - final) / final if final > 0 else float("nan")


def _hessian_change(snapshot: dict, final: dict) -> float:
    full = final["xtx"].float() / max(final["tokens"], 1)
    return float(torch.linalg.matrix_norm(snapshot["xtx"].float() / max(snapshot["tokens"], 1) - full)
                 / torch.linalg.matrix_norm(full).clamp(min=1e-30))


@dataclass
class SweepResult:
    """rows: one per (shuffle, count, input) with absolute values and relative changes to all N."""

    rows: pd.DataFrame
    counts: list[int]
    meta: dict

    def curves(self, metric: str) -> pd.DataFrame:
        """Per count: the median over inputs of ``metric`` in each shuffle, then mean / min / max
        over shuffles (the band)."""
        per_shuffle = self.rows.groupby(["shuffle", "count"])[metric].median().unstack("shuffle")
        return pd.DataFrame({"count": per_shuffle.index, "mean": per_shuffle.mean(axis=1).to_numpy(),
                             "low": per_shuffle.min(axis=1).to_numpy(), "high": per_shuffle.max(axis=1).to_numpy()})


def sweep(loaded: LoadedModel, calibration: CalibrationSet, spec: SweepSpec = SweepSpec(),
          progress: Progress = no_progress) -> SweepResult:
    """One pass per shuffle with snapshots at every count; changes relative to the full set."""
    started = time.perf_counter()
    counts = spec.resolved_counts(len(calibration))
    layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, False)
    quantile = torch.tensor([spec.percentile / 100.0], dtype=torch.float64, device="cpu")
    dtype = SNAPSHOT_DTYPES[spec.snapshot_dtype]
    rows = []
    for shuffle in range(spec.shuffles):
        order = np.random.default_rng(spec.seed + shuffle).permutation(len(calibration)).tolist()
        snapshots: dict[int, dict[str, dict]] = {}

        def take(done: int, accumulators: dict, snapshots=snapshots) -> None:
            if done in counts:  # block by block, each block adds its inputs' snapshots at each count
                snapshots.setdefault(done, {}).update({key: acc.snapshot(quantile, dtype) for key, acc in accumulators.items()})

        request = PassRequest(layers, (Side.INPUT,), lambda channels, device: _Both(channels, device, spec.hessians),
                              state_bytes=lambda layer: layer.in_features**2 * 4 if spec.hessians else 0,
                              batch_size=spec.batch_size, batches=count_batches(order, counts, spec.batch_size),
                              after_batch=take, execution=spec.execution)
        run_pass(loaded, calibration, request, scaled(progress, shuffle / spec.shuffles, (shuffle + 1) / spec.shuffles))
        final = snapshots[counts[-1]]
        for count in counts:
            for key, snapshot in snapshots[count].items():
                row = {"shuffle": shuffle, "count": count, "key": key, "absmax": snapshot["absmax"],
                       "percentile": snapshot["percentile"],
                       "absmax_change": _relative(snapshot["absmax"], final[key]["absmax"]),
                       "percentile_change": _relative(snapshot["percentile"], final[key]["percentile"])}
                if spec.hessians:
                    row["hessian_change"] = _hessian_change(snapshot, final[key])
                rows.append(row)
    meta = {"model": loaded.info.name, "samples": len(calibration), "shuffles": spec.shuffles,
            "percentile": spec.percentile, "inputs": len({r["key"] for r in rows}),
            "seconds": round(time.perf_counter() - started, 2)}
    return SweepResult(pd.DataFrame(rows), counts, meta)


def snapshot_megabytes(loaded: LoadedModel, spec: SweepSpec, samples: int) -> float:
    """Memory the Hessian snapshots of one shuffle take (one copy per count, in the snapshot dtype)."""
    if not spec.hessians:
        return 0.0
    layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, False)
    per_value = SNAPSHOT_DTYPES[spec.snapshot_dtype].itemsize / 4
    return hessian_megabytes(layers) * per_value * len(spec.resolved_counts(samples))
