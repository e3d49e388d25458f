"""FP8, NVFP4 and MXFP4 on the builtin Gemma 3 270M: the perplexity each calibration method gives
at 8, 32 and 128 calibration samples.

What it installs: nothing.

Calibration: 128 windows of 512 tokens (gptq-windows, seed 0) from the first 80% of wikitext-2 test;
8 and 32 are its first windows (nested sets). Evaluation: 16 x 512 held-out windows from the last
20%. float32, so both kinds of CPU give the same numbers. Per count, one statistics pass, then:
FP8 W8A8 static (per-tensor weights and inputs: llm-compressor's FP8) with minmax, p99.99, MSE and
entropy input ranges; NVFP4 W4A4 with its inputs' global scale from minmax, p99.99 and headroom.
Nothing is calibrated for FP8 W8A8 dynamic, NVFP4A16 and MXFP4 W4A4 (their weights' scales come
from the weights): one row each. Prints the table and writes bench/results/float_formats.json/.csv.

Usage: python bench/float_formats.py [--quick]   (--quick: counts 2 and 4, 4 evaluation windows)
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import time
from dataclasses import replace

import pandas as pd

from bench._common import RESULTS, report
from bench.gptq_presets import WIKITEXT, quantized_perplexity
from engine import ModelSpec, load_model
from engine.quant import PRESETS, Calibrated, Quantization, evaluation_windows, perplexity, quantize
from engine.sampling import GptqWindowsSpec, build, rows_dataset
from engine.stats import StatsSpec, collect

CALIBRATED = {"FP8 W8A8 static": ("minmax", "percentile", "mse", "entropy"),
              "NVFP4 W4A4": ("minmax", "percentile", "headroom")}
FIXED = ("FP8 W8A8 dynamic", "NVFP4A16", "MXFP4 W4A4")


def texts() -> tuple[list[str], list[str]]:
    lines = [line.replace("\r", "") for line in WIKITEXT.read_bytes().decode("utf-8").split("\n")]
    cut = int(0.8 * len(lines))
    return [line for line in lines[:cut] if line.strip()], [line for line in lines[cut:] if line.strip()]


def method_label(method: str) -> str:
    return "p99.99" if method == "percentile" else method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    counts, held_out_windows = ((2, 4), 4) if args.quick else ((8, 32, 128), 16)
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype="float32"))
    calibration_text, held_out = texts()
    full = build(rows_dataset(calibration_text, "wikitext-2 test, first 80%"), loaded.tokenizer,
                 GptqWindowsSpec(nsamples=max(counts), length=512, seed=0))
    evaluation = evaluation_windows(loaded.tokenizer, held_out, 512, held_out_windows, "wikitext tail")
    rows = [{"scheme": "float", "method": "-", "samples": None, "perplexity": perplexity(loaded, evaluation)}]
    for name in FIXED:  # nothing calibrated: the same at every count
        plan, _ = quantize(loaded, Quantization(PRESETS[name], sensitivity="none"))
        rows.append({"scheme": name, "method": "none calibrated", "samples": None,
                     "perplexity": quantized_perplexity(loaded, plan, evaluation)})
        print(rows[-1], flush=True)
    seconds = {}
    for count in counts:
        started = time.perf_counter()
        stats = collect(loaded, full.subset(list(range(count))), StatsSpec(channel_histograms=False))
        seconds[count] = round(time.perf_counter() - started, 1)
        for name, methods in CALIBRATED.items():
            for method in methods:
                spec = replace(PRESETS[name], activations=replace(PRESETS[name].activations, range_method=method,
                                                                  percentile=99.99))
                plan, _ = quantize(loaded, Quantization(spec, sensitivity="none"), Calibrated(stats=stats))
                rows.append({"scheme": name, "method": method_label(method), "samples": count,
                             "perplexity": quantized_perplexity(loaded, plan, evaluation)})
                print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    table = frame.dropna(subset=["samples"]).pivot_table(index=["scheme", "method"], columns="samples", values="perplexity",
                                                          sort=False)
    print(frame[frame["samples"].isna()].to_string(index=False))
    print(table.round(3).to_string())
    if not args.quick:
        frame.to_csv(RESULTS / "float_formats.csv", index=False)
    fp8 = frame[frame["scheme"] == "FP8 W8A8 static"]
    spread = {int(count): round(float(group["perplexity"].max() / group["perplexity"].min() - 1), 5)
              for count, group in fp8.groupby("samples")}
    report("float_formats", "fp8_static_method_spread", spread[max(counts)],
           "none (a measurement: how far apart the FP8 static calibration methods land, largest / smallest perplexity - 1)",
           True, dtype="float32", device=loaded.info.device, quick=args.quick, reused={},
           statistics_seconds=seconds, rows=rows, fp8_method_spread_by_count=spread,
           calibration="gptq-windows of 512 tokens, wikitext-2 test first 80%, seed 0 (nested: the first n of 128)",
           evaluation=f"{held_out_windows} x 512, wikitext-2 test last 20%")


if __name__ == "__main__":
    main()
