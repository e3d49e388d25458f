"""Coverage selection vs random on builtin:gemma-3-270m: does a set chosen to excite every outlier
channel quantize better, and do 64 covered samples match 256 random ones?

Calibrated on the builtin mixed corpus (--corpus: 830 documents, Python docs and code), samples of --length tokens, --counts x
--seeds for random and coverage (coverage: greedy weighted set cover over 256 candidates per seed,
outliers above 6x their input's median channel max, reached at 90% of the candidates' max), plus
random at --reference samples (--reference-seeds); each set quantized W4 g128 GPTQ (calibscope's default, llm-compressor's
numerics) and W8A8 static (p99.99); perplexity on --windows held-out windows of the corpus's held-out
10% (in-domain) and of wikitext-2's last quarter (cross-domain). Writes bench/results/coverage_runs.csv
and the mean ± std table (coverage_summary.csv); prints the JSON lines.
Usage: python bench/coverage.py [--seeds 3] [--counts 8,16,32,64] [--reference 256]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse

import pandas as pd

from bench._common import RESULTS, report
from bench.quant_quality import calibration_corpus, held_out_texts
from engine import CorpusSpec, ModelSpec, load_corpus, load_model
from engine.corpus import column
from engine.experiments import ComparisonSpec, compare, summarize
from engine.quant import evaluation_windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reference-seeds", type=int, default=2, help="seeds of the random reference set (the costliest cells)")
    parser.add_argument("--counts", default="8,16,32,64")
    parser.add_argument("--reference", type=int, default=256, help="random samples the 64 covered ones are held against")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--corpus", default="mixed", choices=["python-docs", "python-code", "mixed"])
    args = parser.parse_args()
    counts = tuple(int(c) for c in args.counts.split(","))
    loaded = load_model(ModelSpec("builtin:gemma-3-270m"))
    args.dtype, args.device = loaded.info.dtype, loaded.info.device
    in_domain = column(load_corpus(CorpusSpec.builtin(args.corpus, split="test")), "text")
    evaluations = [evaluation_windows(loaded.tokenizer, in_domain, args.length, args.windows,
                                      f"{args.corpus} held-out (in-domain)"),
                   evaluation_windows(loaded.tokenizer, held_out_texts(), args.length, args.windows,
                                      "wikitext-2 held-out (cross-domain)")]
    corpus = calibration_corpus(args.corpus)
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs = []
    plans = [ComparisonSpec(strategies=("coverage", "random"), seeds=args.seeds, counts=counts, length=args.length)]
    if args.reference:
        plans.append(ComparisonSpec(strategies=("random",), seeds=args.reference_seeds, counts=(args.reference,),
                                    length=args.length))
    for spec in plans:
        for strategy in spec.strategies:
            one = ComparisonSpec(strategies=(strategy,), seeds=spec.seeds, counts=spec.counts, length=spec.length)
            runs.append(compare(loaded, corpus, one, evaluations, corpus_label=args.corpus,
                                progress=lambda fraction, message: print(f"[{fraction:5.1%}] {message}", flush=True)))
            pd.concat(runs, ignore_index=True).to_csv(RESULTS / "coverage_runs.csv", index=False)
    summarize_and_report(pd.concat(runs, ignore_index=True), args)


def summarize_and_report(rows: pd.DataFrame, args) -> None:
    table = summarize(rows)
    table.to_csv(RESULTS / "coverage_summary.csv", index=False)
    print(table.to_string(index=False))
    mean = table.set_index(["evaluation", "scheme", "samples", "strategy"])["mean"]
    cells = [(e, s, n) for e, s, n
             in table[table["strategy"] == "coverage"][["evaluation", "scheme", "samples"]].itertuples(index=False)]
    wins = sum(mean[(e, s, n, "coverage")] < mean[(e, s, n, "random")] for e, s, n in cells)
    largest = max(int(c) for c in args.counts.split(","))
    matches = {f"ppl ratio {largest} covered / {args.reference} random, {scheme}, {evaluation}":
               round(float(mean[(evaluation, scheme, largest, "coverage")]
                           / mean[(evaluation, scheme, args.reference, "random")]), 4)
               for evaluation, scheme in sorted({(e, s) for e, s, _ in cells})
               if (evaluation, scheme, args.reference, "random") in mean}
    report("coverage", "cells where coverage has a lower mean perplexity than random", int(wins), "measured, not a target", True,
           dtype=args.dtype, device=args.device, quick=getattr(args, "quick", False),
           cells=len(cells), seeds=int(rows["seed"].nunique()), length=args.length, windows=args.windows, **matches)


if __name__ == "__main__":
    main()
