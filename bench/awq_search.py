"""What merging a token-wise parent's calls buys AWQ's grid search, and that it changes no choice.

On builtin:gemma-3-270m (the device CUDA when there is one, else the CPU), AWQ (llm-compressor's
preset: the MLP's gate/up searched on the MLP's output, up -> down on Σ xxᵀ) on random samples of
the builtin mixed corpus, --length tokens each, in the pass's batches of 2 sequences (AwqSpec's
default): the search as it runs (the MLP's points on its calls' real tokens in chunks of at least
1,024, engine/quant/methods/awq_pass.py's ``merged_calls``) against the search on the calls as recorded
(batches of two short sequences, padding included), interleaved, best of --repeats. Goal: merged
<= 0.85x the recorded calls' time in every dtype, the same grid point chosen for every mapping and
every measured loss within 1e-4 relative (float32; 2e-2 in bf16, whose products round differently
on other shapes). Usage: python bench/awq_search.py [--quick] [--repeats N] [--dtype D]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import torch

from bench._common import bench_dtypes, report, sized_run, timed
from engine import CorpusSpec, ModelSpec, load_corpus, load_model
from engine.progress import no_progress
from engine.quant import PRESETS, quantizable_layers, search_awq_scaling
from engine.sampling import RandomSpec, build

PRESET = "W4 g128 AWQ (llm-compressor)"
GOAL = 0.85
LOSS_TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}


def timed_search(loaded, calibration, spec, layers, merge_calls: bool = True):
    """One search, timed: search_awq_scaling, not awq_scaling's memo, so every run searches;
    ``merge_calls=False``: on the calls as the pass recorded them (what it ran before merging)."""
    return timed(loaded.info.device,
                 lambda: search_awq_scaling(loaded, calibration, spec, layers, no_progress, merge_calls=merge_calls))


def same_choices(merged, recorded, tolerance: float) -> dict:
    """Whether both searches chose the same point everywhere, and the largest relative loss difference
    over the points both measured in full."""
    largest = 0.0
    for source, losses in recorded.losses.items():
        both = ~torch.isnan(losses) & ~torch.isnan(merged.losses[source])
        difference = (merged.losses[source][both] - losses[both]).abs() / losses[both].abs()
        largest = max(largest, float(difference.max()) if difference.numel() else 0.0)
    same = merged.mappings["grid_index"].tolist() == recorded.mappings["grid_index"].tolist()
    return {"same_grid_points": same, "largest_relative_loss_difference": largest, "losses_agree": largest <= tolerance}


def measure(dtype: str, samples: int, length: int, repeats: int) -> dict:
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype=dtype))
    corpus = load_corpus(CorpusSpec.builtin("mixed"))
    calibration = build(corpus, loaded.tokenizer, RandomSpec(nsamples=samples, length=length, seed=0))
    spec = PRESETS[PRESET]
    layers = quantizable_layers(loaded.model, spec)
    merged_s, recorded_s = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        seconds, merged = timed_search(loaded, calibration, spec, layers)
        merged_s.append(seconds)
        seconds, recorded = timed_search(loaded, calibration, spec, layers, merge_calls=False)
        recorded_s.append(seconds)
    return {"dtype": loaded.info.dtype, "device": loaded.info.device, "ratio": round(min(merged_s) / min(recorded_s), 3),
            "merged_s": [round(s, 1) for s in merged_s], "recorded_s": [round(s, 1) for s in recorded_s],
            "tokens": int(sum(len(sequence) for sequence in calibration.sequences)),
            **same_choices(merged, recorded, LOSS_TOLERANCE.get(loaded.info.dtype, 2e-2))}


def main() -> None:
    args, samples, length, repeats = sized_run(__doc__, quick=(8, 128), full=(64, 128), repeats=2)
    rows = [measure(dtype, samples, length, repeats) for dtype in bench_dtypes(args.dtype)]
    worst = max(row["ratio"] for row in rows)
    met_by_dtype = {row["dtype"]: row["ratio"] <= GOAL and row["same_grid_points"] and row["losses_agree"] for row in rows}
    report("awq_search", "AWQ search seconds, MLP calls merged / as recorded (worst dtype)", worst,
           f"<= {GOAL} in every dtype, the same grid points and losses", all(met_by_dtype.values()),
           dtype=[row["dtype"] for row in rows], device=rows[0]["device"], quick=args.quick, preset=PRESET,
           samples=samples, length=length, batch_size=PRESETS[PRESET].awq.batch_size, repeats=repeats,
           met_by_dtype=met_by_dtype, rows=rows)


if __name__ == "__main__":
    main()
