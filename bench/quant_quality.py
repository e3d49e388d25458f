"""Quantization quality on builtin:gemma-3-270m: float vs RTN vs GPTQ perplexity, and static W8A8.

Calibration: --samples x --seqlen tokens (default 64 x 512, GPTQ joined windows, BOS first) from
the first half of wikitext-2's test articles (../shared/data), or from a builtin corpus
(--calibration python-docs | python-code | mixed). Evaluation: --windows non-overlapping windows of
--seqlen tokens from the last quarter of the articles, never seen in calibration. One set of
statistics and Hessians serves every scheme. Goal: GPTQ's perplexity gap to float at most 0.6x
RTN's gap at W4 g128 and at W3 g128.
Usage: python bench/quant_quality.py [--quick] [--samples N] [--windows N] [--calibration NAME]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import time

from bench._common import report
from bench.stats_overhead import WIKITEXT
from engine import CorpusSpec, ModelSpec, load_corpus, load_model
from engine.corpus import column
from engine.quant import PRESETS, Calibrated, evaluate, evaluation_windows, float_reference
from engine.sampling import GptqWindowsSpec, build
from engine.stats import HessianSpec, StatsSpec, collect, collect_hessians

SCHEMES = ("W4 g128 RTN", "W4 g128 GPTQ", "W3 g128 RTN", "W3 g128 GPTQ",
           "W8A8 static (min/max)", "W8A8 static (p99.99)", "W8A8 static (MSE)")
GOAL = 0.6


def calibration_corpus(name: str):
    if name == "wikitext":
        corpus = load_corpus(CorpusSpec.file(WIKITEXT))
        return corpus.select(range(len(corpus) // 2))
    return load_corpus(CorpusSpec.builtin(name))


def held_out_texts() -> list[str]:
    texts = column(load_corpus(CorpusSpec.file(WIKITEXT)), "text")
    return texts[3 * len(texts) // 4:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="16 x 256 calibration, 4 windows: a smoke run")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--calibration", default="wikitext", choices=["wikitext", "python-docs", "python-code", "mixed"])
    args = parser.parse_args()
    samples, seqlen, windows = (16, 256, 4) if args.quick else (args.samples, args.seqlen, args.windows)
    loaded = load_model(ModelSpec("builtin:gemma-3-270m"))
    calibration = build(calibration_corpus(args.calibration), loaded.tokenizer, GptqWindowsSpec(nsamples=samples, length=seqlen))
    evaluation = evaluation_windows(loaded.tokenizer, held_out_texts(), seqlen, windows, "wikitext-2 test, last quarter")
    started = time.perf_counter()
    stats = collect(loaded, calibration, StatsSpec(channel_histograms=False))
    hessians = collect_hessians(loaded, calibration, HessianSpec(diagnostics="none"))
    calibration_s = time.perf_counter() - started
    reference = float_reference(loaded, evaluation)
    results = {"float": {"perplexity": round(reference.perplexity, 4)}}
    for name in SCHEMES:
        result = evaluate(loaded, PRESETS[name], Calibrated(stats=stats, hessians=hessians), evaluation,
                          make_reference=lambda *_: reference)
        results[name] = {"perplexity": round(result.quantized_perplexity, 4), "gap": round(result.gap, 4),
                         **{key: round(value, 5) for key, value in result.divergence.summary().items()},
                         "seconds": result.meta["seconds"]}
        print(f"{name:24s} perplexity {result.quantized_perplexity:9.3f}  gap {result.gap:+8.3f}  "
              f"KLD {result.divergence.mean_kld:.4f}  "
              f"({result.meta['seconds']:.0f} s)", flush=True)
    ratios = {bits: results[f"{bits} g128 GPTQ"]["gap"] / results[f"{bits} g128 RTN"]["gap"] for bits in ("W4", "W3")}
    worst = max(ratios.values())
    report("quant_quality", "GPTQ perplexity gap / RTN perplexity gap (worst of W4 g128, W3 g128)", round(worst, 3),
           f"<= {GOAL}", worst <= GOAL, dtype=loaded.info.dtype, device=loaded.info.device, quick=args.quick,
           gap_ratios={k: round(v, 3) for k, v in ratios.items()},
           calibration=args.calibration, samples=samples, seqlen=seqlen, evaluation_windows=evaluation.windows.shape[0],
           evaluation_tokens=evaluation.tokens, statistics_and_hessians_s=round(calibration_s, 1), results=results)


if __name__ == "__main__":
    main()
