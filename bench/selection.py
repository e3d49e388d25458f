"""The comparison experiment on builtin:gemma-3-270m: which calibration samples quantize best?

Strategies (random, length-stratified, embedding-clusters, activation-clusters, self-generated) x
--seeds x --counts samples of --length tokens, calibrated on a builtin corpus (and with
--also-wikitext on wikitext-2's first half, ../shared/data), each quantized W4 g128 GPTQ and W8A8
static (p99.99), perplexity on held-out windows of two domains: the builtin corpus's held-out 10%
(in-domain) and wikitext-2's last quarter (cross-domain). Writes every measurement
(bench/results/selection_runs.csv) and the mean ± std table.
CPU-feasible defaults; --quick is a smoke run. --schemes and --name run another experiment into
bench/results/NAME_runs.csv, NAME_summary.csv and NAME.json (the AWQ table: --schemes "W4 g128 AWQ
(llm-compressor),W4 g128 GPTQ" --strategies random,length-stratified,embedding-clusters,coverage
--counts 8,32,128 --seeds 3 --length 128 --corpus mixed --name awq_selection).
Usage: python bench/selection.py [--quick] [--seeds N] [--counts 8,32] [--corpus python-docs]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
from dataclasses import replace
from pathlib import Path

import pandas as pd

from bench._common import QUICK_RESULTS, RESULTS, report
from bench.quant_quality import calibration_corpus, held_out_texts
from engine import CorpusSpec, ModelSpec, load_corpus, load_model
from engine.corpus import column
from engine.experiments import ComparisonSpec, compare, summarize
from engine.quant import evaluation_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 strategies, 2 seeds, 4 samples: a smoke run")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--counts", default="8,32")
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--corpus", default="python-docs", choices=["python-docs", "python-code", "mixed"],
                        help="the builtin corpus calibrated on (and whose held-out part is one evaluation set)")
    parser.add_argument("--strategies", default="", help="comma-separated subset of the strategies (default: all)")
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in the result file (those of other strategies or other sample counts)")
    parser.add_argument("--also-wikitext", action="store_true",
                        help="also calibrate on wikitext-2's first half (doubles the time)")
    parser.add_argument("--schemes", default="",
                        help="comma-separated preset names (default: W4 g128 GPTQ, W8A8 static (p99.99))")
    parser.add_argument("--name", default="selection", help="the result files' name")
    args = parser.parse_args()
    counts = tuple(int(c) for c in args.counts.split(","))
    spec = (ComparisonSpec(strategies=("random", "embedding-clusters"), seeds=2, counts=(4,), length=128)
            if args.quick else ComparisonSpec(seeds=args.seeds, counts=counts, length=args.length))
    if args.schemes:
        spec = replace(spec, schemes=tuple(args.schemes.split(",")))
    folder = QUICK_RESULTS if args.quick else RESULTS  # a smoke run never replaces a measured table
    runs_file = folder / f"{args.name}_runs.csv"
    if args.strategies:
        spec = replace(spec, strategies=tuple(args.strategies.split(",")))
    loaded = load_model(ModelSpec("builtin:gemma-3-270m"))
    builtin_held_out = column(load_corpus(CorpusSpec.builtin(args.corpus, split="test")), "text")
    evaluations = [evaluation_windows(loaded.tokenizer, held_out_texts(), spec.length, args.windows, "wikitext-2 held-out"),
                   evaluation_windows(loaded.tokenizer, builtin_held_out, spec.length, args.windows, f"{args.corpus} held-out")]
    folder.mkdir(parents=True, exist_ok=True)
    runs = []
    reused = {}
    if args.append and runs_file.is_file():
        kept = pd.read_csv(runs_file)
        runs.append(kept[~(kept["strategy"].isin(spec.strategies) & kept["samples"].isin(spec.counts))])
        reused[runs_file.name] = (f"{len(runs[-1])} rows of strategies {sorted(runs[-1]['strategy'].unique())} and counts "
                                  f"{sorted(int(n) for n in runs[-1]['samples'].unique())} from an earlier run (--append), "
                                  "summarized with this run's")
    for name in (args.corpus, "wikitext") if args.also_wikitext else (args.corpus,):
        corpus = calibration_corpus(name)
        for strategy in spec.strategies:  # one strategy at a time, saved as it completes
            one = replace(spec, strategies=(strategy,))

            def progress(fraction: float, message: str, name: str = name) -> None:
                print(f"[{name} {fraction:5.1%}] {message}", flush=True)

            runs.append(compare(loaded, corpus, one, evaluations, corpus_label=name, progress=progress))
            pd.concat(runs, ignore_index=True).to_csv(runs_file, index=False)
    summarize_and_report(pd.concat(runs, ignore_index=True), spec.length, {e.name: e.tokens for e in evaluations},
                         {"dtype": loaded.info.dtype, "device": loaded.info.device, "reused": reused, "quick": args.quick},
                         args.name, folder)


def summarize_and_report(rows: pd.DataFrame, length: int, evaluation_tokens: dict, provenance: dict,
                         name: str = "selection", folder: Path = RESULTS) -> None:
    """Mean ± std table (bench/results/NAME_summary.csv) and the JSON summary, from all runs."""
    table = summarize(rows)
    if "awq_ratio" in rows:  # how AWQ's chosen power moves with the set: its mean over seeds, beside the perplexity
        ratios = rows.dropna(subset=["awq_ratio"]).groupby(["calibration", "evaluation", "scheme", "samples", "strategy"])
        table = table.merge(ratios["awq_ratio"].mean().rename("awq_ratio").reset_index(), how="left")
    table.to_csv(folder / f"{name}_summary.csv", index=False)
    print(table.to_string(index=False))
    random = table[table["strategy"] == "random"].set_index(["calibration", "evaluation", "scheme", "samples"])["mean"]
    best = table[table["best"]]
    wins = {f"{r.calibration}->{r.evaluation} {r.scheme} n={r.samples}": r.strategy for r in best.itertuples()}
    beats_random = int(sum(r.strategy != "random" and r.mean < random.loc[(r.calibration, r.evaluation, r.scheme, r.samples)]
                       for r in best.itertuples()))
    report(name, "cells (calibration x evaluation x scheme x count) where a non-random strategy has the lowest mean perplexity",
           beats_random, "measured, not a target", True, **provenance, cells=len(best), winners=wins,
           seeds=int(rows["seed"].nunique()), counts=sorted(int(n) for n in rows["samples"].unique()), length=length,
           runs_per_strategy_and_count={f"{k[0]} n={k[1]}": int(v) for k, v in
                                        rows.drop_duplicates(["strategy", "seed", "samples", "calibration"])
                                        .groupby(["strategy", "samples"]).size().items()},
           schemes=sorted(rows["scheme"].unique()), evaluation_tokens=evaluation_tokens)


if __name__ == "__main__":
    main()
