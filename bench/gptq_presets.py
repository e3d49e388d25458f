"""GPTQ W4 g128 as each tool ships it, and sequential against one-pass, on the builtin Gemma.

The same 32 windows of 512 tokens from the first 80% of wikitext-2 test (calibscope's recipe, seed
0), one collection of Hessians, then each preset (calibscope's default, llm-compressor, GPTQModel,
the GPTQ reference; RTN for scale) and the llm-compressor preset sequentially (each block's Hessians
from the already-quantized blocks before it, block by block); perplexity on 16 windows of 512 from
the last 20%. Prints the table and ``{"bench": "gptq_presets", ...}``. Nothing is installed.
"""
from __future__ import annotations

import time
from pathlib import Path

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

from bench._common import report
from engine import ModelSpec, load_model
from engine.quant import PRESETS, Calibrated, Quantization, QuantSpec, evaluation_windows, perplexity, quantize, quantized
from engine.sampling import GptqWindowsSpec, build, rows_dataset
from engine.stats import HessianSpec, collect_hessians

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw-test" / "wiki.test.raw"
SCHEMES = ["W4 g128 RTN", "W4 g128 GPTQ", "W4 g128 GPTQ (gptqmodel)", "W4 g128 GPTQ (gptq-reference)"]


def quantized_perplexity(loaded, plan, evaluation) -> float:
    with quantized(loaded, plan):
        return perplexity(loaded, evaluation)


def windows(loaded):
    """The calibration windows (32 x 512 from the first 80% of wikitext-2 test, seed 0) and the
    held-out evaluation windows (16 x 512 from the last 20%) every GPTQ bench here uses."""
    lines = [line.replace("\r", "") for line in WIKITEXT.read_bytes().decode("utf-8").split("\n")]
    cut = int(0.8 * len(lines))
    calibration = build(rows_dataset([line for line in lines[:cut] if line.strip()], "wikitext-2 test, first 80%"),
                        loaded.tokenizer, GptqWindowsSpec(nsamples=32, length=512))
    evaluation = evaluation_windows(loaded.tokenizer, [line for line in lines[cut:] if line.strip()], 512, 16, "wikitext tail")
    return calibration, evaluation


def main() -> None:
    loaded = load_model(ModelSpec("builtin:gemma-3-270m"))
    calibration, evaluation = windows(loaded)
    started = time.perf_counter()
    hessians = collect_hessians(loaded, calibration, HessianSpec(diagnostics="none"))
    hessian_seconds = time.perf_counter() - started
    rows = [{"scheme": "float", "perplexity": perplexity(loaded, evaluation), "seconds": 0.0}]
    for name in SCHEMES:
        spec: QuantSpec = PRESETS[name]
        started = time.perf_counter()
        plan, table = quantize(loaded, Quantization(spec, sensitivity="none"), Calibrated(hessians=hessians))
        seconds = time.perf_counter() - started
        fallbacks = int((table.get("fallback") == "rtn").sum()) if "fallback" in table else 0
        rows.append({"scheme": name, "perplexity": quantized_perplexity(loaded, plan, evaluation),
                     "seconds": round(seconds, 1), "rtn_fallbacks": fallbacks})
        print(rows[-1], flush=True)
    spec = PRESETS["W4 g128 GPTQ"]
    for propagate in (False, True):
        started = time.perf_counter()
        plan, _ = quantize(loaded, Quantization(spec, sequential=True, sensitivity="none", propagate=propagate),
                           Calibrated(calibration))
        label = "sequential" if propagate else "one-pass"
        rows.append({"scheme": f"W4 g128 GPTQ, {label}, block by block",
                     "perplexity": quantized_perplexity(loaded, plan, evaluation),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1], flush=True)
    import pandas as pd

    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    by = dict(zip(frame["scheme"], frame["perplexity"]))
    ratio = by["W4 g128 GPTQ"] / by["W4 g128 GPTQ (gptq-reference)"]
    report("gptq_presets", "ppl_ratio_default_vs_gptq_reference", round(ratio, 4),
           "measured, no goal (the peers themselves: bench/peers.py)", True, dtype=loaded.info.dtype, device=loaded.info.device,
           rows=rows, hessian_seconds=round(hessian_seconds, 1), calibration="32 x 512 gptq-windows, wikitext-2 test first 80%",
           evaluation="16 x 512, wikitext-2 test last 20%")


if __name__ == "__main__":
    main()
