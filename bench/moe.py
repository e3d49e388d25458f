"""What a starved expert costs, on a real-weight MoE: builtin:gemma-3-270m-moe (the builtin Gemma 3
made MoE here, engine/models/moefied.py; its float perplexity beside the dense model's).

For --counts random sets of --length tokens from the builtin ``mixed`` corpus (--seeds each), the
experts' statistics are collected once per set (routed and all-token Hessians), and W4 g128 GPTQ is
planned with each expert policy on the same set:
- ``router``: each expert's GPTQ on the tokens its router sent it, however few (an expert sent none:
  RTN), as the peers do;
- ``fallback RTN``: below its input width (the Hessian's rank), RTN;
- ``fallback all tokens``: below its input width, the Hessian of every token of its block;
- ``all-experts``: every expert on every token (llm-compressor's moe_calibrate_all_experts).
Perplexity on wikitext-2's held-out quarter; per set, how many experts got no token and how many
fewer than the input width. And the coverage strategy against random: experts reached (any token,
and at least the input width) on sets of the same size (--coverage-counts).
Writes bench/results/moe_runs.csv, moe_reach.csv and moe.json. --quick is a smoke run (one seed, 8 samples).
Usage: python bench/moe.py [--quick] [--seeds 3] [--counts 8,32,128] [--length 128]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import time
from dataclasses import replace

import pandas as pd

from bench._common import QUICK_RESULTS, RESULTS, report
from bench.quant_quality import calibration_corpus, held_out_texts
from engine import ModelSpec, load_model
from engine.models import MOEFIED, MOEFIED_DENSE, MOEFIED_DESCRIPTION
from engine.quant import (
    PRESETS,
    Calibrated,
    ExpertCalibration,
    ExpertFallback,
    ExpertPolicy,
    evaluation_windows,
    perplexity,
    quantize,
    quantized,
)
from engine.sampling import build, spec_for
from engine.stats import ExpertSpec, HessianSpec, collect_expert_stats, collect_hessians

SCHEME = "W4 g128 GPTQ"
POLICIES = {
    "router": ExpertPolicy(ExpertCalibration.ROUTER, min_tokens=1, fallback=ExpertFallback.RTN),
    "fallback RTN": ExpertPolicy(ExpertCalibration.ROUTER, fallback=ExpertFallback.RTN),
    "fallback all tokens": ExpertPolicy(ExpertCalibration.ROUTER, fallback=ExpertFallback.ALL),
    "all-experts": ExpertPolicy(ExpertCalibration.ALL),
}


def starving(routing: pd.DataFrame, width: int) -> dict:
    """How many experts a set left without a token, and below ``width`` tokens (their Hessian's rank)."""
    return {"experts": len(routing), "no_token": int((routing["tokens"] == 0).sum()),
            "below_width": int((routing["tokens"] < width).sum())}


def one_set(loaded, calibration, evaluation) -> list[dict]:
    """Perplexity of W4 g128 GPTQ with each expert policy on one set, and the set's starving experts."""
    width = loaded.model.config.hidden_size
    experts = collect_expert_stats(loaded, calibration, ExpertSpec(keep_hessians=True, all_tokens=True))
    dense = collect_hessians(loaded, calibration, HessianSpec(diagnostics="none"))
    rows = []
    for name, policy in POLICIES.items():
        started = time.perf_counter()
        plan, table = quantize(loaded, replace(PRESETS[SCHEME], experts=policy), Calibrated(hessians=dense, experts=experts))
        rows_of_experts = table.dropna(subset=["expert"])  # one row per expert and part (gate_up, down)
        per_expert = (rows_of_experts.assign(module=rows_of_experts["layer"].str.rpartition(".")[0])
                      .drop_duplicates(["module", "expert"]))
        with quantized(loaded, plan):
            value = perplexity(loaded, evaluation)
        rows.append({"policy": name, "perplexity": value,
                     "fallbacks": int(per_expert["calibration"].str.contains("fallback").sum()),
                     **starving(experts.routing, width), "seconds": round(time.perf_counter() - started, 1)})
    return rows


def reach(loaded, corpus, counts: tuple[int, ...], seeds: int, length: int) -> pd.DataFrame:
    """Experts reached by random and by coverage sets of each size: any token, and the input width."""
    width = loaded.model.config.hidden_size
    rows = []
    for strategy in ("random", "coverage"):
        for samples in counts:
            for seed in range(seeds):
                calibration = build(corpus, loaded.tokenizer, spec_for(strategy, nsamples=samples, length=length, seed=seed),
                                    max_positions=loaded.info.max_positions, model=loaded)
                routing = collect_expert_stats(loaded, calibration, ExpertSpec(hessians=False)).routing
                rows.append({"strategy": strategy, "samples": samples, "seed": seed, "tokens": int(calibration.lengths.sum()),
                             **starving(routing, width)})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one seed, 8 samples, 2 evaluation windows")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--counts", default="8,32,128")
    parser.add_argument("--coverage-counts", default="8,32")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    seeds, counts, windows = ((1, (8,), 2) if args.quick
                              else (args.seeds, tuple(int(c) for c in args.counts.split(",")), args.windows))
    coverage_counts = (8,) if args.quick else tuple(int(c) for c in args.coverage_counts.split(","))
    loaded = load_model(ModelSpec(MOEFIED))
    reused = {"moefication fit": "the experts' split and routers from the cache (made once, keyed by the builtin "
                                 "weights; the same fit a cold run makes)"} if loaded.info.from_cache else {}
    evaluation = evaluation_windows(loaded.tokenizer, held_out_texts(), 256, windows, "wikitext-2 held-out")
    moe_float = perplexity(loaded, evaluation)
    dense = load_model(ModelSpec(MOEFIED_DENSE, dtype=loaded.info.dtype))
    dense_float = perplexity(dense, evaluation)
    del dense
    corpus = calibration_corpus("mixed")
    folder = QUICK_RESULTS if args.quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    reached = reach(loaded, corpus, coverage_counts, seeds, args.length)
    reached.to_csv(folder / "moe_reach.csv", index=False)
    runs = []
    for seed in range(seeds):  # seed-major, saved after each set: a run stopped early keeps whole seeds
        for samples in counts:
            calibration = build(corpus, loaded.tokenizer, spec_for("random", nsamples=samples, length=args.length, seed=seed),
                                max_positions=loaded.info.max_positions)
            for row in one_set(loaded, calibration, evaluation):
                runs.append({"samples": samples, "seed": seed, "tokens": int(calibration.lengths.sum()), **row})
                print(runs[-1], flush=True)
            pd.DataFrame(runs).to_csv(folder / "moe_runs.csv", index=False)
    runs = pd.DataFrame(runs)
    table = runs.groupby(["samples", "policy"])["perplexity"].agg(["mean", "std"]).round(3)
    starved = runs.drop_duplicates(["samples", "seed"]).groupby("samples")[["no_token", "below_width"]].mean()
    reach_table = reached.groupby(["samples", "strategy"])[["no_token", "below_width"]].mean()
    print(table.to_string(), starved.to_string(), reach_table.to_string(), sep="\n\n")
    best = runs.groupby(["samples", "policy"])["perplexity"].mean().groupby("samples").idxmin()
    report("moe", "the expert policy of lowest mean perplexity per sample count (W4 g128 GPTQ)",
           {int(n): policy for n, (_, policy) in best.items()}, "measured, not a target", True,
           dtype=loaded.info.dtype, device=loaded.info.device, reused=reused, quick=args.quick,
           float_perplexity={"dense": dense_float, "moe": moe_float}, model=MOEFIED_DESCRIPTION,
           perplexity={f"n={n} {p}": row["mean"] for (n, p), row in table.iterrows()},
           starving={f"n={n}": row.to_dict() for n, row in starved.iterrows()},
           reach={f"n={n} {s}": row.to_dict() for (n, s), row in reach_table.iterrows()},
           experts=int(runs["experts"].iloc[0]), seeds=seeds, length=args.length, evaluation_tokens=evaluation.tokens)


if __name__ == "__main__":
    main()
