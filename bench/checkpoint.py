"""Quantized checkpoints: what calibscope writes is what it measured, in the files the peers write.

What it installs: nothing for parts 1 and 3 (calibscope's own environment, compressed-tensors
included); part 2 runs llm-compressor 0.14.0.1 and GPTQModel 7.3.6 in their own environments, made
once under the cache by bench/peers.py (see there for what each holds).

1. roundtrip: the builtin Gemma 3 270M, float32 and (where the CPU has native bf16) bfloat16; W4
   g128 GPTQ (llm-compressor's numerics, every layer at once from the Hessians of 32 x 512 wikitext
   windows) written as compressed-tensors and as GPTQ in the model's dtype (the dtype the simulation
   ran in; bench/awq_symmetric.py writes the default bfloat16): write seconds, files, bytes; read back (the
   package's own decompressor; GPTQ unpacking): the largest difference from the simulated weights;
   compressed-tensors reloaded by transformers' AutoModelForCausalLM: perplexity on 16 x 512 held-out
   windows over the simulated model's (goal <= 1.001).
2. peers: on the same windows, float32: llm-compressor's GPTQModifier W4A16 (save_compressed)
   against calibscope's default W4 g128 GPTQ as compressed-tensors, and GPTQModel's
   QuantizeConfig(bits=4, group_size=128) (save) against calibscope's "W4 g128 GPTQ (gptqmodel)"
   preset run as GPTQModel runs it (block by block, true sequential) as GPTQ v1: tensor names,
   dtypes and shapes and the quantization_config keys and values compared (versions, and fields
   compressed-tensors 0.20 leaves out when null, aside; GPTQModel's ``meta`` record listed apart),
   every difference printed; calibscope's GPTQ checkpoint read by GPTQModel's own loader (in float16,
   the widest dtype its kernels take), its dequantized weights against calibscope's simulated ones
   and against calibscope's own reader of the same file rounded to float16.
3. big (--part big): the Llama 3.1 8B shape (random weights, bf16 on disk) quantized block by block
   from disk (sequential GPTQ W4 g128 on 4 x 128 tokens, float32 compute) and written block by
   block as compressed-tensors, in a fresh process: peak RSS (goal <= 6 GB). --blocks N takes the
   first N blocks (default 2): every block holds the same memory, and GPTQ of the 14336-column down
   projection takes minutes per block on 2 cores (all 32: hours).

Usage: python bench/checkpoint.py [--part roundtrip|peers|big|all] [--blocks N] [--quick]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from bench._checkpoints import checkpoint as random_checkpoint
from bench._common import STABLE_MALLOC, bench_dtypes, peak_rss_mb, report
from bench.gptq_presets import windows
from bench.peers import HERE, environment, exported_windows
from engine import ModelSpec, load_model
from engine.export import CheckpointWriter, dequantized_layers, largest_weight_difference, reloaded_divergence, save_quantized
from engine.models import cache_root, cached_checkpoint
from engine.quant import PRESETS, Calibrated, Quantization, divergence, float_reference, quantize, quantized
from engine.stats import HessianSpec, collect_hessians

ROOT = Path(__file__).resolve().parents[1]
SPEC = PRESETS["W4 g128 GPTQ"]  # llm-compressor's GPTQModifier W4A16
RATIO_GOAL, RSS_GOAL_MB = 1.001, 6 * 1024
VERSION_KEYS = {"version", "quantizer"}  # compressed-tensors' version (0.19 there, 0.20 here); the quantizing tool's
EMPTY = (None, {}, "(absent)")  # compressed-tensors 0.20 leaves out fields that 0.19 wrote as null or {}


def tensor_layout(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    layout = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as opened:
            for key in opened.keys():  # noqa: SIM118 - safe_open has keys() but is neither iterable nor a container
                tensor = opened.get_slice(key)
                layout[key] = (tensor.get_dtype(), tuple(tensor.get_shape()))
    return layout


def config_differences(ours: dict, theirs: dict, path: str = "") -> list[str]:
    """Every key whose value differs (or that one side lacks), nested keys as a.b.c."""
    found = []
    for key in sorted(set(ours) | set(theirs)):
        where = f"{path}{key}"
        if key in VERSION_KEYS:
            continue
        if isinstance(ours.get(key), dict) and isinstance(theirs.get(key), dict):
            found += config_differences(ours[key], theirs[key], where + ".")
        elif ours.get(key, "(absent)") in EMPTY and theirs.get(key, "(absent)") in EMPTY:
            continue
        elif key not in ours or key not in theirs or ours[key] != theirs[key]:
            found.append(f"{where}: calibscope {ours.get(key, '(absent)')!r}, peer {theirs.get(key, '(absent)')!r}")
    return found


def layout_differences(ours: dict, theirs: dict) -> list[str]:
    found = [f"{name}: only in the peer's file {theirs[name]}" for name in sorted(set(theirs) - set(ours))]
    found += [f"{name}: only in calibscope's file {ours[name]}" for name in sorted(set(ours) - set(theirs))]
    found += [f"{name}: calibscope {ours[name]}, peer {theirs[name]}" for name in sorted(set(ours) & set(theirs))
              if ours[name] != theirs[name]]
    return found


def quantization_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["quantization_config"]


def roundtrip(dtype: str, work: Path) -> dict:
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype=dtype))
    calibration, evaluation = windows(loaded)
    hessians = collect_hessians(loaded, calibration, HessianSpec(diagnostics="none"))
    plan, _ = quantize(loaded, Quantization(SPEC, sensitivity="none"), Calibrated(hessians=hessians))
    reference = float_reference(loaded, evaluation)
    with quantized(loaded, plan):
        measured = divergence(loaded, evaluation, reference)
    simulated = measured.perplexity
    row = {"dtype": dtype, "simulated_perplexity": round(simulated, 4), "simulated_kld": round(measured.mean_kld, 6)}
    for fmt in ("compressed-tensors", "gptq"):
        folder = work / f"gemma-{dtype}-{fmt}"
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        summary = save_quantized(loaded, plan, SPEC, folder, fmt, dtype="model")
        written = time.perf_counter() - started
        row[fmt] = {"write_s": round(written, 2), "files": summary.files, "bytes": summary.bytes,
                    "max_weight_difference": largest_weight_difference(folder, plan.weights)}
        if fmt == "compressed-tensors":
            started = time.perf_counter()
            back, how = reloaded_divergence(folder, loaded, evaluation, reference)
            row[fmt].update(reloaded_perplexity=round(back.perplexity, 4), reloaded_kld=round(back.mean_kld, 6),
                            reload_s=round(time.perf_counter() - started, 1), reloaded_with=how,
                            ppl_ratio_reloaded_vs_simulated=round(back.perplexity / simulated, 6))
        print(json.dumps(row), flush=True)
    return row


def peers(work: Path) -> dict:
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype="float32"))  # the peers' scripts load float32
    source, _, _ = cached_checkpoint("builtin:gemma-3-270m", lambda *_: None)
    calibration, _ = windows(loaded)
    hessians = collect_hessians(loaded, calibration, HessianSpec(diagnostics="none"))
    plan, _ = quantize(loaded, Quantization(SPEC, sensitivity="none"), Calibrated(hessians=hessians))
    # GPTQModel's own defaults, as it runs them (block by block, true sequential), for its format
    gptqmodel_spec = PRESETS["W4 g128 GPTQ (gptqmodel)"]
    gptqmodel_plan, _ = quantize(loaded, Quantization(gptqmodel_spec, sequential=True, sensitivity="none"),
                                 Calibrated(calibration))
    folders = {name: work / name for name in ("calibscope-ct", "calibscope-gptq", "llmcompressor", "gptqmodel")}
    for folder in folders.values():
        shutil.rmtree(folder, ignore_errors=True)
    # in the model's dtype, float32, as the peers write a float32 model
    save_quantized(loaded, plan, SPEC, folders["calibscope-ct"], "compressed-tensors", dtype="model")
    save_quantized(loaded, gptqmodel_plan, gptqmodel_spec, folders["calibscope-gptq"], "gptq", dtype="model")
    jsonl = exported_windows(calibration, loaded.tokenizer, "jsonl", work)
    gptqmodel = {**os.environ, "GPTQMODEL_CPU_WORKERS": "2"}  # it refuses fewer than two workers
    subprocess.run([str(environment("llmcompressor")), str(HERE / "peer_scripts" / "llmcompressor_checkpoint.py"),
                    str(source), str(jsonl), str(folders["llmcompressor"])], check=True, cwd=work)
    subprocess.run([str(environment("gptqmodel")), str(HERE / "peer_scripts" / "gptqmodel_checkpoint.py"), "quantize",
                    str(source), str(jsonl), str(folders["gptqmodel"])], check=True, cwd=work, env=gptqmodel)
    read_back = work / "gptqmodel-read-calibscope.safetensors"
    subprocess.run([str(environment("gptqmodel")), str(HERE / "peer_scripts" / "gptqmodel_checkpoint.py"), "load",
                    str(folders["calibscope-gptq"]), str(read_back)], check=True, cwd=work, env=gptqmodel)
    by_gptqmodel = load_file(read_back)  # in float16: its kernels take float16 or bfloat16, not float32
    simulated = {name: gptqmodel_plan.weights[name].float() for name in by_gptqmodel}
    ours = dict(dequantized_layers(folders["calibscope-gptq"]))  # calibscope's reader of the same file
    gptq_config = config_differences(quantization_config(folders["calibscope-gptq"]), quantization_config(folders["gptqmodel"]))
    result = {
        "llmcompressor": {
            "tensors": layout_differences(tensor_layout(folders["calibscope-ct"]), tensor_layout(folders["llmcompressor"])),
            "quantization_config": config_differences(quantization_config(folders["calibscope-ct"]),
                                                      quantization_config(folders["llmcompressor"]))},
        "gptqmodel": {
            "tensors": layout_differences(tensor_layout(folders["calibscope-gptq"]), tensor_layout(folders["gptqmodel"])),
            # what loaders read: every key but meta, GPTQModel's record of how it ran (listed, not counted)
            "quantization_config": [line for line in gptq_config if not line.startswith("meta.")],
            "meta_differences": [line for line in gptq_config if line.startswith("meta.")],
            "layers_read_by_its_loader": len(by_gptqmodel), "layers_written": len(plan.weights),
            "max_weight_difference_its_loader_vs_simulated": max(
                float((by_gptqmodel[name] - simulated[name]).abs().max()) for name in by_gptqmodel),
            "max_weight_difference_its_loader_vs_calibscope_reader_in_float16": max(
                float((by_gptqmodel[name] - ours[name].half().float()).abs().max()) for name in by_gptqmodel)},
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


def big_child(folder: str, samples: int, length: int) -> dict:
    """One fresh process: block by block from disk, each block's quantized layers written as it finishes."""
    from bench.scale import calibration as packed

    started = time.perf_counter()
    loaded = load_model(ModelSpec(folder, dtype="float32", offload="disk"))
    data = packed(loaded, samples, length)
    out = Path(tempfile.mkdtemp(prefix="calibscope-checkpoint-")) / "w4"
    try:
        with CheckpointWriter(loaded, SPEC, out) as writer:
            quantize(loaded, Quantization(SPEC, sequential=True, sensitivity="none", hessians=HessianSpec(diagnostics="none")),
                     Calibrated(data), sink=writer.add)
            summary = writer.finish()
        return {"peak_rss_mb": peak_rss_mb(), "seconds": round(time.perf_counter() - started, 1),
                "files": len(summary.files), "bytes": summary.bytes,
                "quantized_layers": summary.quantized_layers}
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def big(blocks: int, quick: bool) -> dict:
    samples, length = (2, 64) if quick else (4, 128)
    folder = random_checkpoint("llama-3.1-8b", blocks)
    done = subprocess.run([sys.executable, __file__, "--child", str(folder), str(samples), str(length)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **STABLE_MALLOC}, cwd=ROOT,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"the block-by-block run failed:\n{done.stderr[-3000:]}")
    run = json.loads(done.stdout.strip().splitlines()[-1])
    return {"shape": f"llama-3.1-8b ({blocks} of 32 blocks, full-size embedding and head)", "samples": samples,
            "tokens_per_sample": length,
            "checkpoint_gb": round(sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30, 2),
            **run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["roundtrip", "peers", "big", "all"], default="all")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--dtype", default="both", help="roundtrip: float32, bfloat16, or both")
    parser.add_argument("--quick", action="store_true", help="big: 2 x 64 tokens (checks the script)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(big_child(args.child[0], int(args.child[1]), int(args.child[2]))))
        return
    work = cache_root() / "bench" / "checkpoint"
    work.mkdir(parents=True, exist_ok=True)
    reused = {"builtin checkpoint": "the builtin model converted once into the weight cache (no timing depends on it)"}
    if args.part in ("roundtrip", "all"):
        rows = [roundtrip(dtype, work) for dtype in bench_dtypes(args.dtype)]
        worst = max(abs(row["compressed-tensors"]["ppl_ratio_reloaded_vs_simulated"] - 1) + 1 for row in rows)
        report("checkpoint", "ppl_ratio_reloaded_vs_simulated", max(r["compressed-tensors"]["ppl_ratio_reloaded_vs_simulated"]
                                                                    for r in rows),
               f"<= {RATIO_GOAL} (the largest over the dtypes; |ratio - 1| at most {worst - 1:.2g})", worst <= RATIO_GOAL,
               dtype=[row["dtype"] for row in rows], device="cpu", reused=reused, scheme=SPEC.label(), rows=rows)
    if args.part in ("peers", "all"):
        result = peers(work)
        same = not any(result[tool][part] for tool in result for part in ("tensors", "quantization_config"))
        report("checkpoint_peers", "files_differing_from_the_peers", sum(len(result[t][p]) for t in result
                                                                         for p in ("tensors", "quantization_config")),
               "0 differences in tensor names, dtypes, shapes and quantization_config (versions aside)", same,
               dtype="float32", device="cpu", reused={**reused, "peer environments": "made once by bench/peers.py"},
               scheme=SPEC.label(), **result)
    if args.part in ("big", "all"):
        run = big(args.blocks, args.quick)
        report("checkpoint_8b", "peak_rss_mb_quantize_and_write_block_by_block", run["peak_rss_mb"], f"<= {RSS_GOAL_MB}",
               run["peak_rss_mb"] <= RSS_GOAL_MB, dtype="float32 compute, bfloat16 on disk", device="cpu", quick=args.quick,
               reused={"checkpoint": "the random-weight checkpoint written once into the cache"}, **run)


if __name__ == "__main__":
    main()
