"""Cost of a sample-count sweep with snapshots, against one collection at N and the naive re-runs.

On builtin:gemma-3-270m with N = 32 x 256 tokens of wikitext (GPTQ joined windows, BOS first):
- one collection: a single pass accumulating per-tensor statistics and Σ XᵀX of every distinct
  input of every quantizable layer but the head (the same accumulators the sweep uses);
- the sweep with the dashboard's defaults: 3 shuffles, snapshots at 1, 2, 4, 8, 16, 32 samples of
  each, all from one pass (each sample's sums charged to its prefix in every shuffle, Hessian
  buckets in bfloat16, block by block), changes relative to N computed as each block finishes;
- the naive way: a fresh collection on the first n samples, for every n and every shuffle.
Goal: sweep / one collection <= 1.15. Runs are interleaved; the best of --repeats is kept.
One row per dtype (float32, and bfloat16 where the CPU has native bf16).
Usage: python bench/sweep_cost.py [--quick] [--repeats N] [--dtype D]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split

import numpy as np

from bench._common import bench_dtypes, report, sized_run
from bench.stats_overhead import calibration_set, timed
from engine import ModelSpec, load_model
from engine.experiments import SweepSpec, sweep
from engine.hooks import Side, select_layers
from engine.models import LAYER_KINDS
from engine.runner import PassRequest, run_pass
from engine.stats import ActivationAccumulator, HessianAccumulator

GOAL = 1.15


class StatsAndHessian:
    """Tensor-level statistics and Σ XᵀX of one input: what the sweep measures, collected once."""

    def __init__(self, channels, device) -> None:
        self.stats = ActivationAccumulator(channels, channel_histograms=False, device=device)
        self.hessian = HessianAccumulator(channels, storage=device)

    def update(self, x, tokens) -> None:
        self.stats.update(x, tokens)
        self.hessian.update(x)


def one_collection(loaded, calibration, batch_size: int) -> None:
    layers = select_layers(loaded.model, LAYER_KINDS, "", False)
    request = PassRequest(layers, (Side.INPUT,), StatsAndHessian, lambda layer: 0, batch_size=batch_size)
    run_pass(loaded, calibration, request)


def measure(dtype: str, samples: int, seqlen: int, repeats: int) -> dict:
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype=dtype))
    calibration = calibration_set(loaded, samples, seqlen)
    spec = SweepSpec(shuffles=3, batch_size=8)
    counts = spec.resolved_counts(len(calibration))
    orders = [np.random.default_rng(spec.seed + s).permutation(len(calibration)).tolist() for s in range(spec.shuffles)]
    one_collection(loaded, calibration.subset(orders[0][:2]), 8)  # warm-up
    single, swept, naive = [], [], []
    for _ in range(repeats):
        single.append(timed(lambda: one_collection(loaded, calibration, 8)))
        swept.append(timed(lambda: sweep(loaded, calibration, spec)))
        naive.append(timed(lambda: [one_collection(loaded, calibration.subset(order[:n]), 8)
                                    for order in orders for n in counts]))
    return {"dtype": loaded.info.dtype, "ratio": round(min(swept) / min(single), 3), "counts": counts, "shuffles": spec.shuffles,
            "one_collection_s": [round(t, 2) for t in single], "sweep_s": [round(t, 2) for t in swept],
            "naive_reruns_s": [round(t, 2) for t in naive], "sweep_vs_naive": round(min(swept) / min(naive), 3)}


def main() -> None:
    args, samples, seqlen, repeats = sized_run(__doc__, quick=(8, 128), full=(32, 256), repeats=2)
    rows = [measure(dtype, samples, seqlen, repeats) for dtype in bench_dtypes(args.dtype)]
    worst = max(row["ratio"] for row in rows)
    report("sweep_cost", "sweep with snapshots seconds / one collection at N seconds (worst dtype)", worst,
           f"<= {GOAL} in every dtype", worst <= GOAL, dtype=[row["dtype"] for row in rows], device="cpu", quick=args.quick,
           samples=samples, seqlen=seqlen, repeats=repeats, met_by_dtype={row["dtype"]: row["ratio"] <= GOAL for row in rows},
           rows=rows)


if __name__ == "__main__":
    main()
