"""Calibrating the models people quantize: block by block against the whole model, and the GPU table.

Default (CPU): the Llama-3.2-1B shape (random bf16 weights written once to the cache, computed in
float32), Hessians + GPTQ W4 g128 on 8 x 256 tokens, each run in a fresh process: the whole model
in memory (every Hessian kept, then GPTQ) against block by block from the checkpoint on disk (each
block's Hessians handed to GPTQ and freed). Prints peak RSS of both and their ratio (goal <= 0.35),
and how far the two agree (Hessian traces, quantized weights).
--shape llama-3.1-8b: the 8B shape (16 GB bf16 on disk) through statistics + Hessians (quick
diagnosis, dropped after each block) block by block on 4 x 128 tokens: peak RSS (goal <= 6 GB).
--shape qwen3-30b-a3b: a mixture of experts at scale (128 experts of 768 per block, 2 blocks by
default, --layers): expert statistics, every expert's Hessians (all-experts: each on every token, so
every expert gets GPTQ) and GPTQ W4 g128 block by block from disk, each block handed on and freed, on
4 x 128 tokens: peak RSS against the plan (the resident embeddings and head, two blocks' weights and
one block's expert Hessians, in float32).
--table --device cuda: per shape (Gemma-270M, Llama-1B, Llama-8B), 128 x 2048 tokens, bf16: a bare
head-less forward, full statistics, every Hessian, GPTQ W4 g128 over all layers (seconds, ratios
to the forward) and peak GPU memory, whole model and block by block.
--quick shrinks every size (2 blocks, 4 x 64 tokens) to check the script (minutes on a CPU: GPTQ of 8192 columns).
Usage: python bench/scale.py [--quick] [--shape llama-3.1-8b | qwen3-30b-a3b] [--table --device cuda]
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
from dataclasses import replace
from pathlib import Path

import torch

from bench._checkpoints import SHAPES, checkpoint
from bench._common import STABLE_MALLOC, peak_rss_mb, report
from engine import CorpusSpec, ModelSpec, load_corpus, load_model
from engine.export import CheckpointWriter, save_quantized
from engine.quant import PRESETS, Calibrated, ExpertPolicy, Quantization, quantize
from engine.sampling import PackedSpec, build
from engine.stats import HessianSpec, StatsSpec, collect, collect_hessians

ROOT = Path(__file__).resolve().parents[1]
GPTQ = PRESETS["W4 g128 GPTQ"]


def calibration(loaded, samples: int, length: int):
    """Packed blocks of the builtin corpus (byte tokens): every sample exactly ``length`` tokens."""
    corpus = load_corpus(CorpusSpec.builtin("mixed"))
    return build(corpus, loaded.tokenizer, PackedSpec(nsamples=samples, length=length, seed=0))


def checksums(table) -> dict:
    """Per layer: its Hessian's trace and its quantized weight's relative error (to compare runs)."""
    return {row.layer: {"hessian_trace": row.hessian_trace, "weight_error": row.weight_error} for row in table.itertuples()}


def child(mode: str, folder: str, samples: int, length: int) -> dict:
    """One measured run in this fresh process (peak RSS covers loading too); both runs write the
    quantized model as a compressed-tensors checkpoint, the job a user runs."""
    started = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="calibscope-scale-"))
    if mode == "whole":  # the whole model in memory, every Hessian kept, then GPTQ
        loaded = load_model(ModelSpec(folder, dtype="float32", offload="none"))
        data = calibration(loaded, samples, length)
        hessians = collect_hessians(loaded, data, HessianSpec(diagnostics="none", execution="whole-model"))
        plan, table = quantize(loaded, GPTQ, Calibrated(hessians=hessians))
        save_quantized(loaded, plan, GPTQ, out / "checkpoint")
    elif mode == "blockwise":  # block by block from disk, each block's Hessians handed to GPTQ and freed
        loaded = load_model(ModelSpec(folder, dtype="float32", offload="disk"))
        data = calibration(loaded, samples, length)
        with CheckpointWriter(loaded, GPTQ, out / "checkpoint") as writer:
            _, table = quantize(loaded, Quantization(GPTQ, sequential=True, propagate=False,
                                                     hessians=HessianSpec(diagnostics="none")), Calibrated(data), sink=writer.add)
            writer.finish()
    elif mode == "experts":  # MoE: every expert's Hessians and GPTQ block by block, each block handed on and dropped
        loaded = load_model(ModelSpec(folder, dtype="float32", offload="disk"))
        data = calibration(loaded, samples, length)
        handed = []
        spec = replace(GPTQ, experts=ExpertPolicy(calibration="all-experts"))
        blockwise = Quantization(spec, sequential=True, sensitivity="none", propagate=False,
                                 hessians=HessianSpec(diagnostics="none"))
        _, table = quantize(loaded, blockwise, Calibrated(data), sink=lambda block: handed.append(len(block.experts)))
        experts = table.dropna(subset=["expert"]) if "expert" in table else table.iloc[:0]
        return {"peak_rss_mb": peak_rss_mb(), "seconds": round(time.perf_counter() - started, 1),
                "tokens": int(data.lengths.sum()),
                "dense_layers": int(len(table) - len(experts)), "expert_rows": len(experts),
                "experts_gptq": int(experts["calibration"].eq("all tokens").sum() if len(experts) else 0),
                "expert_modules_handed_on": sum(handed), "plan_gb": memory_plan(loaded)}
    else:  # statistics + Hessians, diagnosed and dropped per block
        loaded = load_model(ModelSpec(folder, dtype="float32", offload="disk"))
        data = calibration(loaded, samples, length)
        stats = collect(loaded, data, StatsSpec(batch_size=4))
        hessians = collect_hessians(loaded, data, HessianSpec(batch_size=4, keep=False, diagnostics="quick"))
        return {"peak_rss_mb": peak_rss_mb(), "seconds": round(time.perf_counter() - started, 1),
                "observed": stats.meta["observed"], "diagnosed": int(hessians.diagnostics["trace"].notna().sum()),
                "plan": hessians.meta["plan"], "tokens": int(data.lengths.sum())}
    shutil.rmtree(out, ignore_errors=True)
    return {"peak_rss_mb": peak_rss_mb(), "seconds": round(time.perf_counter() - started, 1),
            "layers": len(table), "checksums": checksums(table), "tokens": int(data.lengths.sum())}


def memory_plan(loaded) -> dict:
    """The peak the block-by-block MoE run should stay under, in GB of float32: what stays resident
    (embeddings, head, final norm), two blocks' weights (the one worked on and the next onloaded) and
    one block's expert Hessians (gate/up: H x H per expert; down: I x I per expert)."""
    model, gb = loaded.model, 4 / 2**30
    blocks = model.model.layers
    block = sum(p.numel() for p in blocks[0].parameters()) * gb
    rest = sum(p.numel() for name, p in model.named_parameters() if ".layers." not in name) * gb
    config = model.config
    hessians = config.num_experts * (config.hidden_size**2 + config.moe_intermediate_size**2) * gb
    return {"resident": round(rest, 2), "block": round(block, 2), "expert_hessians": round(hessians, 2),
            "total": round(rest + 2 * block + hessians, 2)}


def measured(mode: str, folder: Path, samples: int, length: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(folder), str(samples), str(length)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **STABLE_MALLOC},
                          cwd=ROOT, check=False)
    if done.returncode:
        raise RuntimeError(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def largest_relative_difference(first: dict, second: dict, field: str) -> float:
    return max(abs(first[k][field] - second[k][field]) / max(abs(first[k][field]), 1e-30) for k in first if field in first[k])


def cpu_comparison(args) -> None:
    layers, samples, length = (2, 4, 64) if args.quick else (None, 8, 256)
    folder = checkpoint("llama-3.2-1b", layers)
    whole = measured("whole", folder, samples, length)
    blockwise = measured("blockwise", folder, samples, length)
    ratio = blockwise["peak_rss_mb"] / whole["peak_rss_mb"]
    report("scale", "peak_rss_ratio_blockwise_vs_whole", round(ratio, 3), "<= 0.35", ratio <= 0.35,
           device="cpu", quick=args.quick,
           reused={"checkpoint": "the random-weight checkpoint written once into the cache (no timing depends on writing it)"},
           shape="llama-3.2-1b" + (f" ({layers} blocks)" if layers else ""), samples=samples, tokens_per_sample=length,
           dtype="float32", weights_on_disk="bfloat16", whole_peak_rss_mb=whole["peak_rss_mb"],
           blockwise_peak_rss_mb=blockwise["peak_rss_mb"], whole_s=whole["seconds"], blockwise_s=blockwise["seconds"],
           layers=whole["layers"],
           hessian_trace_max_relative_difference=largest_relative_difference(whole["checksums"], blockwise["checksums"],
                                                                             "hessian_trace"),
           weight_error_max_relative_difference=largest_relative_difference(whole["checksums"], blockwise["checksums"],
                                                                            "weight_error"))


def bigger_than_memory(args) -> None:
    layers, samples, length = (2, 4, 64) if args.quick else (None, 4, 128)
    folder = checkpoint(args.shape, layers)
    run = measured("stats-hessians", folder, samples, length)
    goal_mb = 6 * 1024
    report("scale_8b", "peak_rss_mb_statistics_and_hessians_block_by_block", run["peak_rss_mb"], f"<= {goal_mb}",
           run["peak_rss_mb"] <= goal_mb, dtype="float32", device="cpu", quick=args.quick,
           reused={"checkpoint": "the random-weight checkpoint written once into the cache"},
           shape=args.shape + (f" ({layers} blocks)" if layers else ""),
           checkpoint_gb=round(sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30, 2), **run)


def moe_block_by_block(args) -> None:
    layers, samples, length = (1, 2, 32) if args.quick else (args.layers or 2, 4, 128)
    folder = checkpoint(args.shape, layers)
    run = measured("experts", folder, samples, length)
    plan = run["plan_gb"]
    goal_mb = (plan["total"] + 1) * 1024  # + 1 GB: the interpreter, torch and the tokenizer
    report("scale_moe", "peak_rss_mb_expert_gptq_block_by_block", run["peak_rss_mb"],
           f"<= resident + 2 blocks + 1 block's expert Hessians + 1 GB = {goal_mb:.0f} MB", run["peak_rss_mb"] <= goal_mb,
           dtype="float32", device="cpu", quick=args.quick, shape=f"{args.shape} ({layers} blocks)",
           reused={"checkpoint": "the random-weight checkpoint written once into the cache"},
           checkpoint_gb=round(sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30, 2), **run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 blocks, 4 x 64 tokens: checks the script")
    parser.add_argument("--shape", choices=list(SHAPES), default="llama-3.2-1b")
    parser.add_argument("--layers", type=int, default=0, help="blocks of the checkpoint (MoE shape; default 2)")
    parser.add_argument("--table", action="store_true", help="the per-shape speed and memory table (see --device)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, samples, length = args.child
        print(json.dumps(child(mode, folder, int(samples), int(length))))
    elif args.table:
        from bench.scale_table import table

        table(args.device, args.quick)
    elif args.shape == "llama-3.2-1b":
        cpu_comparison(args)
    elif args.shape == "qwen3-30b-a3b":
        moe_block_by_block(args)
    else:
        bigger_than_memory(args)


if __name__ == "__main__":
    main()
