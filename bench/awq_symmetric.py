"""AWQ on symmetric weights (the AWQ presets: llm-compressor's W4A16, whose checkpoints
transformers loads on a CPU) beside asymmetric ones (W4A16_ASYM, ``W4 g128 AWQ asym (vLLM)``, whose
packed zero points only vLLM reads), and the symmetric checkpoint served as written.

The builtin Gemma in float32 on the windows of ``bench/peers.py --part awq`` (32 x 512 wikitext-2
windows, 16 x 512 held out; every result evaluated by calibscope's perplexity): W4 g128 RTN
symmetric and asymmetric, then ``W4 g128 AWQ`` and ``W4 g128 AWQ (llm-compressor)`` timed around
their pass and plan. The asymmetric AWQ numbers are bench/results/peers_awq.json's, on the same
windows (the asymmetric RTN measured again here says whether they still stand: 28.53 there).

Then ``W4 g128 AWQ``'s checkpoint is written from the float32 model in bfloat16 (the default) and in
float32: bytes each; the bfloat16 one is loaded by ``AutoModelForCausalLM.from_pretrained(folder)``
with no dtype (the config's) and its perplexity compared with the simulated model in bfloat16 (the
float32 plan in the model cast to bfloat16). Goal: that ratio <= 1.001. Nothing is installed.

--norms (after a full run, whose float32 checkpoint it reads from the cache): where the bfloat16
checkpoint loses perplexity. The float32 checkpoint read back into the float32 model (its
simulation), then the same with its changed float parts (AWQ's rescaled norm gains) rounded to
bfloat16 as the default checkpoint holds them, then with Gemma's norm gain 1 + w rounded to
bfloat16 instead of w (what a loader computing 1 + w would get from a gain stored so);
``{"bench": "awq_symmetric_norms", ...}``: the second over the first.
Usage: python bench/awq_symmetric.py [--norms]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from bench._common import report
from bench.gptq_presets import quantized_perplexity, windows
from bench.peers import PEER_DTYPE
from engine import ModelSpec, load_model
from engine.export import changed_floats, dequantized_layers, save_quantized
from engine.models import cache_root, from_model
from engine.quant import PRESETS, Calibrated, Quantization, QuantizedModel, QuantSpec, WeightSpec, perplexity, quantize

MODEL = "builtin:gemma-3-270m"
RATIO_GOAL = 1.001
PEERS_AWQ = Path(__file__).resolve().parent / "results" / "peers_awq.json"
AWQ = {"W4 g128 AWQ": "every input, q/k/v under q_norm / k_norm too (calibscope's default)",
       "W4 g128 AWQ (llm-compressor)": "its Gemma 3 mappings, found from the model"}


def asymmetric_rows() -> list[dict]:
    """The asymmetric AWQ rows bench/peers.py measured on the same windows, and the commit it measured."""
    result = json.loads(PEERS_AWQ.read_text())
    return [{**row, "weights": "asymmetric", "measured_at": result["source"]["commit"]}
            for row in result["rows"] if row["tool"] == "calibscope" and "AWQ" in row["scheme"]]


def timed_plan(loaded, spec: QuantSpec, calibration):
    started = time.perf_counter()
    plan, _ = quantize(loaded, Quantization(spec, sensitivity="none"), Calibrated(samples=calibration))
    return plan, round(time.perf_counter() - started, 1)


def served(loaded, plan, spec: QuantSpec, evaluation, work: Path) -> dict:
    """The plan written in bfloat16 and float32; the bfloat16 checkpoint run by transformers in the
    config's dtype, against the simulation in bfloat16."""
    sizes = {}
    for dtype in ("bfloat16", "float32"):
        folder = work / f"gemma-awq-{dtype}"
        shutil.rmtree(folder, ignore_errors=True)
        sizes[dtype] = save_quantized(loaded, plan, spec, folder, dtype=dtype).bytes
    started = time.perf_counter()
    back = AutoModelForCausalLM.from_pretrained(work / "gemma-awq-bfloat16")  # no dtype: the config's
    with torch.no_grad():
        back(torch.ones(1, 2, dtype=torch.long))  # compressed-tensors decompresses on the first forward
    reloaded = perplexity(from_model(back, loaded.tokenizer), evaluation)
    reload_s = round(time.perf_counter() - started, 1)
    in_bfloat16 = load_model(ModelSpec(MODEL, dtype="bfloat16"))  # the same weights, cast
    simulated = quantized_perplexity(in_bfloat16, plan, evaluation)
    return {"bytes": sizes, "mib": {dtype: round(size / 2**20, 1) for dtype, size in sizes.items()},
            "reloaded_dtype": str(back.dtype).removeprefix("torch."), "reloaded_perplexity": round(reloaded, 4),
            "simulated_perplexity_bfloat16": round(simulated, 4), "reload_s": reload_s,
            "ppl_ratio_reloaded_vs_simulated_bfloat16": round(reloaded / simulated, 6)}


def norms(work: Path) -> None:
    loaded = load_model(ModelSpec(MODEL, dtype=PEER_DTYPE))
    _, evaluation = windows(loaded)
    folder = work / "gemma-awq-float32"
    weights, floats = dict(dequantized_layers(folder)), changed_floats(folder, loaded)
    gains = {name: value for name, value in floats.items() if name.endswith("norm.weight")}
    stored = {
        "float32 checkpoint read back (the simulation)": floats,
        "its changed float parts rounded to bfloat16 (as the default checkpoint holds them)":
            {name: value.bfloat16().float() for name, value in floats.items()},
        "Gemma's norm gains 1 + w rounded to bfloat16 instead of w":
            {name: (1 + value).bfloat16().float() - 1 if name in gains else value.bfloat16().float()
             for name, value in floats.items()},
    }
    rows = [{"floats": label, "perplexity": round(quantized_perplexity(loaded, QuantizedModel(weights=weights, floats=values),
                                                                       evaluation), 4)} for label, values in stored.items()]
    print(rows, flush=True)
    smallest = min(float((1 + value).abs().min()) for value in gains.values())
    ratio = round(rows[1]["perplexity"] / rows[0]["perplexity"], 4)
    report("awq_symmetric_norms", "ppl_ratio_bfloat16_floats_vs_float32", ratio,
           f"<= {RATIO_GOAL}: AWQ's rescaled float parts survive bfloat16", ratio <= RATIO_GOAL, dtype=PEER_DTYPE,
           device=loaded.info.device, reused={"checkpoint": f"{folder.name}, written by this bench's full run"},
           rows=rows, changed_floats=len(floats), norm_gains=len(gains), smallest_norm_gain=smallest,
           scheme="W4 g128 AWQ", evaluation="16 x 512, wikitext-2 test last 20%")


def main() -> None:
    if "--norms" in sys.argv[1:]:
        norms(cache_root() / "bench" / "awq_symmetric")
        return
    loaded = load_model(ModelSpec(MODEL, dtype=PEER_DTYPE))
    calibration, evaluation = windows(loaded)
    rows = [{"scheme": "float", "weights": "-", "seconds": None, "perplexity": round(perplexity(loaded, evaluation), 4)}]
    for symmetric in (True, False):
        spec = QuantSpec(WeightSpec("rtn", 4, 128, symmetric=symmetric))
        plan, seconds = timed_plan(loaded, spec, calibration)
        rows.append({"scheme": "W4 g128 RTN (no AWQ)", "weights": "symmetric" if symmetric else "asymmetric",
                     "seconds": seconds, "perplexity": round(quantized_perplexity(loaded, plan, evaluation), 4)})
        print(rows[-1], flush=True)
    plans = {}
    for name, what in AWQ.items():
        plans[name], seconds = timed_plan(loaded, PRESETS[name], calibration)
        rows.append({"scheme": f"{name}: {what}", "weights": "symmetric", "seconds": seconds,
                     "perplexity": round(quantized_perplexity(loaded, plans[name], evaluation), 4)})
        print(rows[-1], flush=True)
    rows += asymmetric_rows()
    work = cache_root() / "bench" / "awq_symmetric"
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = served(loaded, plans["W4 g128 AWQ"], PRESETS["W4 g128 AWQ"], evaluation, work)
    print(json.dumps(checkpoint), flush=True)
    ratio = checkpoint["ppl_ratio_reloaded_vs_simulated_bfloat16"]
    report("awq_symmetric", "ppl_ratio_reloaded_vs_simulated_bfloat16", ratio,
           f"<= {RATIO_GOAL}: the symmetric W4 g128 AWQ checkpoint, written from the float32 model in the default "
           "bfloat16, run by transformers' from_pretrained with no dtype at the simulated model's perplexity in bfloat16",
           ratio <= RATIO_GOAL, dtype=PEER_DTYPE, device=loaded.info.device,
           reused={"asymmetric AWQ rows": "bench/results/peers_awq.json, the same windows (its commit in each row)",
                   "checkpoint": "the builtin model converted once into the weight cache (no timing depends on it)"},
           rows=rows, checkpoint=checkpoint, calibration="32 x 512 gptq-windows, wikitext-2 test first 80%",
           evaluation="16 x 512, wikitext-2 test last 20%")


if __name__ == "__main__":
    main()
