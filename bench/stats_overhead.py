"""Cost of the full activation-statistics pass relative to a bare forward, and its memory bound.

On builtin:gemma-3-270m with 16 x 512 tokens of wikitext (GPTQ joined windows, BOS first):
- ratio: full statistics (ranges, moments, per-tensor and per-channel histograms, attribution,
  every quantizable layer but the head) / a bare head-less forward of the same batches.
  Runs are interleaved and the best of --repeats kept (this machine is shared and noisy).
- the head-less forward's speed-up over a full forward with logits (Gemma's head is most of it);
- a seed-style hook (per-sample abs-max of every layer input) on the same batches, for reference;
- peak resident memory of a statistics run at 16 and 64 samples, each in a fresh process, and the
  statistics' own memory (accumulator bytes), which must not grow with the sample count.
One row per model dtype: float32, and bfloat16 where the CPU has native bf16 (what dtype auto runs
there); the goal holds for each. Usage: python bench/stats_overhead.py [--quick] [--dtype D]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from bench._common import STABLE_MALLOC, bench_dtypes, current_rss_mb, peak_rss_mb, report, sized_run
from engine import CorpusSpec, ModelSpec, load_corpus, load_model
from engine.hooks import observing
from engine.sampling import GptqWindowsSpec, build
from engine.stats import StatsSpec, collect, select_layers

WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext-2-raw-test" / "wiki.test.raw"
BATCH = 8



def calibration_set(loaded, samples: int, seqlen: int):
    corpus = load_corpus(CorpusSpec.file(WIKITEXT))
    return build(corpus, loaded.tokenizer, GptqWindowsSpec(nsamples=samples, length=seqlen))


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def forward_all(model, calibration, head: bool) -> None:
    device = next(model.parameters()).device
    with torch.inference_mode():
        for batch in calibration.batches(BATCH):
            batch = {name: tensor.to(device) for name, tensor in batch.items()}  # the model's device, CUDA included
            (model if head else model.base_model)(**batch, use_cache=False)


def seed_style_hook(loaded, calibration) -> None:
    """The seed design: per-sample abs-max of each layer input (reduces every dim but the batch)."""
    values: dict[str, list] = {}
    layers = select_layers(loaded.model, StatsSpec())

    def keep(name):
        return lambda x: values.setdefault(name, []).append(x.abs().amax(dim=tuple(range(1, x.dim()))))

    with observing([(layer.module, "input", keep(layer.name)) for layer in layers]):
        forward_all(loaded.model, calibration, head=False)


def memory_child(samples: int, seqlen: int, dtype: str) -> None:
    """Run in a fresh process: one statistics pass, then print peak memory as JSON."""
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype=dtype))
    calibration = calibration_set(loaded, samples, seqlen)
    resident = current_rss_mb()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) so it measures collect alone
    result = collect(loaded, calibration, StatsSpec(batch_size=BATCH))
    print(json.dumps({"peak_rss_during_collect_mb": peak_rss_mb(), "rss_before_collect_mb": resident,
                      "accumulator_mb": result.meta["accumulator_mb"]}))


def memory_at(samples: int, seqlen: int, dtype: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--memory-child", str(samples), str(seqlen), dtype], capture_output=True,
                          text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **STABLE_MALLOC}, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(dtype: str, samples: int, seqlen: int, repeats: int) -> dict:
    """One dtype's row: the ratio, its parts, and the memory bound."""
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype=dtype))
    calibration = calibration_set(loaded, samples, seqlen)
    spec = StatsSpec(batch_size=BATCH)
    forward_all(loaded.model, calibration, head=False)  # warm-up
    bare, stats = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        bare.append(timed(lambda: forward_all(loaded.model, calibration, head=False)))
        stats.append(timed(lambda: collect(loaded, calibration, spec)))
    no_channel = timed(lambda: collect(loaded, calibration, StatsSpec(batch_size=BATCH, channel_histograms=False)))
    full_forward = timed(lambda: forward_all(loaded.model, calibration, head=True))
    seed = timed(lambda: seed_style_hook(loaded, calibration))
    small, large = memory_at(samples, seqlen, dtype), memory_at(samples * 4, seqlen, dtype)
    return {
        "dtype": loaded.info.dtype, "ratio": round(min(stats) / min(bare), 3),
        "bare_forward_s": [round(t, 2) for t in bare], "statistics_s": [round(t, 2) for t in stats],
        "without_channel_histograms_ratio": round(no_channel / min(bare), 3),
        "headless_speedup_over_full_forward": round(full_forward / min(bare), 2), "full_forward_s": round(full_forward, 2),
        "seed_style_hook_ratio": round(seed / min(bare), 3),
        "memory": {f"{samples}_samples": small, f"{samples * 4}_samples": large,
                   "peak_ratio": round(large["peak_rss_during_collect_mb"] / small["peak_rss_during_collect_mb"], 3),
                   # bounded: 4x the samples may not raise the peak by more than 5% (allocator noise can lower it)
                   "bounded": large["peak_rss_during_collect_mb"] <= 1.05 * small["peak_rss_during_collect_mb"]
                   and large["accumulator_mb"] == small["accumulator_mb"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args, samples, seqlen, repeats = sized_run(__doc__, quick=(8, 256), full=(16, 512), repeats=3, parser=parser)
    if args.memory_child:
        memory_child(int(args.memory_child[0]), int(args.memory_child[1]), args.memory_child[2])
        return
    rows = [measure(dtype, samples, seqlen, repeats) for dtype in bench_dtypes(args.dtype)]
    worst = max(row["ratio"] for row in rows)
    report("stats_overhead", "full statistics seconds / bare head-less forward seconds (worst dtype)", worst,
           "<= 1.10 in every dtype",
           worst <= 1.10 and all(row["memory"]["bounded"] for row in rows), dtype=[row["dtype"] for row in rows], device="cpu",
           quick=args.quick, samples=samples, seqlen=seqlen, repeats=repeats,
           met_by_dtype={row["dtype"]: row["ratio"] <= 1.10 for row in rows}, rows=rows)


if __name__ == "__main__":
    main()
