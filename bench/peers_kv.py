"""bench/peers.py --part kv: llm-compressor 0.14's FP8 preset with an FP8 KV cache
(``bench/peer_scripts/llmcompressor_kv.py``: kv_cache_scheme per tensor and attn_head with the static
min-max observer, the set's |max| as calibscope's min-max; and per tensor with its default observer,
a moving average of each forward's range) against calibscope's "FP8 W8A8 static" + KV cache min-max on
the same windows: every k_scale / v_scale read from llm-compressor's checkpoint and compared (goal:
max relative difference <= 1e-5 for the same method), and both evaluated by calibscope's perplexity
(goal: ratio <= 1.00); ``{"bench": "peers_kv", ...}``."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
from pathlib import Path

import torch

from bench._common import report
from bench.gptq_presets import quantized_perplexity
from engine.export import dequantized_layers, input_quantizers, stored_kv_scales
from engine.quant import PRESETS, Calibrated, KVCacheSpec, Quantization, QuantizedModel, quantize
from engine.stats import StatsSpec, collect, collect_kv

KV_SCALE_GOAL = 1e-5
# (strategy, llm-compressor observer): the same method as calibscope's min-max, and the peer's default
PEER_RUNS = (("tensor", "static_minmax"), ("attn_head", "static_minmax"), ("tensor", "minmax"))


def relative_difference(ours: dict, theirs: dict) -> float:
    """The largest relative difference of any key or value scale of any layer (inf where one side lacks a layer)."""
    if set(ours) != set(theirs):
        return float("inf")
    worst = 0.0
    for name, scales in ours.items():
        for mine, peer in ((scales.keys, theirs[name].keys), (scales.values, theirs[name].values)):
            mine, peer = mine.float().reshape(-1), peer.float().reshape(-1)
            worst = max(worst, float(((mine - peer).abs() / peer.abs().clamp(min=1e-30)).max()))
    return worst


def kv_part(loaded, checkpoint: Path, calibration, evaluation, work: Path, environment, exported_windows, here: Path) -> None:
    jsonl = exported_windows(calibration, loaded.tokenizer, "jsonl", work)
    started = time.perf_counter()
    stats = collect(loaded, calibration, StatsSpec(channel_histograms=False))
    kv = collect_kv(loaded, calibration)
    collected = time.perf_counter() - started
    rows, differences, ratios = [], {}, {}
    for strategy, observer in PEER_RUNS:
        spec = dataclasses.replace(PRESETS["FP8 W8A8 static"], kv_cache=KVCacheSpec(strategy, "minmax"))
        started = time.perf_counter()
        plan, _ = quantize(loaded, Quantization(spec, sensitivity="none"), Calibrated(calibration, stats=stats, kv_cache=kv))
        ours_seconds = collected + time.perf_counter() - started
        folder = work / f"llmcompressor-kv-{strategy}-{observer}"
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([str(environment("llmcompressor")), str(here / "peer_scripts" / "llmcompressor_kv.py"), str(checkpoint),
                        str(jsonl), str(folder), strategy, observer], check=True, cwd=work)
        dtype = next(loaded.model.parameters()).dtype
        theirs = QuantizedModel(weights=dict(dequantized_layers(folder)), inputs=input_quantizers(folder),
                                kv_cache=stored_kv_scales(folder, dtype))
        label = f"KV {strategy}, llm-compressor observer {observer}"
        differences[label] = relative_difference(plan.kv_cache, theirs.kv_cache)
        peer_seconds = json.loads((folder / "oneshot.json").read_text())["seconds"]
        swapped = dataclasses.replace(plan, kv_cache=theirs.kv_cache)  # calibscope's weights, the peer's KV scales
        found = {}
        for tool, model, seconds in (("calibscope", plan, ours_seconds), ("llmcompressor", theirs, peer_seconds),
                                     ("calibscope, llm-compressor's KV scales", swapped, None)):
            found[tool] = quantized_perplexity(loaded, model, evaluation)
            rows.append({"tool": tool, "scheme": f"FP8 W8A8 static + {label}", "seconds": seconds and round(seconds, 1),
                         "perplexity": found[tool]})
            print(rows[-1], flush=True)
        ratios[label] = round(found["calibscope"] / found["llmcompressor"], 5)
    same_method = [label for label in differences if "static_minmax" in label]
    largest = max(differences[label] for label in same_method)
    met = largest <= KV_SCALE_GOAL and all(round(ratios[label], 2) <= 1.0 for label in same_method)  # "<= 1.00"
    report("peers_kv", "max relative difference of k_scale / v_scale, calibscope min-max vs llm-compressor static_minmax",
           largest, f"<= {KV_SCALE_GOAL} and perplexity ratio <= 1.00 (same method)", met,
           dtype=loaded.info.dtype, device=loaded.info.device,
           reused={"peer environments": "made once under the cache (no timing depends on them)"},
           scale_differences={k: (v if v != float("inf") else "layers differ") for k, v in differences.items()},
           ppl_ratio_calibscope_vs_llmcompressor=ratios, rows=rows, float_kv_scales_dtype=str(torch.float32),
           calibration="32 x 512 gptq-windows, wikitext-2 test first 80%", evaluation="16 x 512, wikitext-2 test last 20%")
