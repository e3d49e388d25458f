"""Cost of collecting every GPTQ Hessian relative to a bare head-less forward, with and without input sharing.

On builtin:gemma-3-270m with 16 x 512 tokens of wikitext (GPTQ joined windows, BOS first): the
accumulation pass (H += XᵀX per distinct input, float32) over every quantizable layer but the
head, divided by a bare head-less forward of the same batches (goal <= 1.5); the same without
sharing (q/k/v and gate/up each accumulating their own copy), whose ratio to the shared pass is
the saving; and, separately, the time of the diagnostics (eigenvalues, rank, damping search).
Runs are interleaved; the best of --repeats is kept. One row per dtype (float32, and bfloat16 where the
CPU has native bf16). Usage: python bench/hessian.py [--quick] [--dtype D]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import time

from bench._common import bench_dtypes, report, sized_run
from bench.stats_overhead import calibration_set, forward_all
from engine import ModelSpec, load_model
from engine.stats import HessianSpec, collect_hessians

BATCH = 8
GOAL = 1.5
# Why a bf16 model's Hessians cost more relative to its forward on a CPU: the forward's GEMMs run in
# bf16, the Hessian's Σ XᵀX must be float32 (a bf16-output GEMM rounds each partial sum to 8
# significant bits), and torch has no bf16 x bf16 -> float32 GEMM on the CPU (aten::mm.dtype and
# addmm.dtype exist for CUDA only), so the products upcast and run at float32 speed.
BF16_NOTE = ("bfloat16: the Hessian GEMMs run in float32 (no bf16 -> float32 GEMM on the CPU in torch; a bf16 output "
             "rounds to 8 bits), against a forward whose GEMMs run in bf16")


def timed(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def measure(dtype: str, samples: int, seqlen: int, repeats: int) -> dict:
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype=dtype))
    calibration = calibration_set(loaded, samples, seqlen)
    forward_all(loaded.model, calibration, head=False)  # warm-up
    bare, shared, separate = [], [], []
    for _ in range(repeats):
        bare.append(timed(lambda: forward_all(loaded.model, calibration, head=False))[0])
        seconds, result = timed(lambda: collect_hessians(loaded, calibration, HessianSpec(batch_size=BATCH, diagnostics="none")))
        shared.append(seconds)
        separate.append(timed(lambda: collect_hessians(loaded, calibration,
                                                       HessianSpec(batch_size=BATCH, share_inputs=False, diagnostics="none")))[0])
    diagnostics_s, diagnosed = timed(lambda: collect_hessians(loaded, calibration, HessianSpec(batch_size=BATCH)))
    return {
        "dtype": loaded.info.dtype, "ratio": round(min(shared) / min(bare), 3), "bare_forward_s": [round(t, 2) for t in bare],
        "hessians_s": [round(t, 2) for t in shared], "without_sharing_s": [round(t, 2) for t in separate],
        "without_sharing_ratio": round(min(separate) / min(bare), 3), "sharing_speedup": round(min(separate) / min(shared), 3),
        "memory_mb": result.meta["memory_mb"], "memory_without_sharing_mb": result.meta["memory_without_sharing_mb"],
        "layers": result.meta["layers"], "distinct_inputs": result.meta["distinct"],
        "pass_and_diagnostics_s": round(diagnostics_s, 2),
        "rank_deficient_layers": int((diagnosed.diagnostics["warning"] != "").sum()),
        "largest_condition_number": float(diagnosed.diagnostics["condition_number"].max()),
    }


def main() -> None:
    args, samples, seqlen, repeats = sized_run(__doc__, quick=(8, 256), full=(16, 512), repeats=2)
    rows = [measure(dtype, samples, seqlen, repeats) for dtype in bench_dtypes(args.dtype)]
    worst = max(row["ratio"] for row in rows)
    report("hessian", "all Hessians seconds / bare head-less forward seconds (worst dtype)", worst, f"<= {GOAL} in every dtype",
           worst <= GOAL, dtype=[row["dtype"] for row in rows], device="cpu", quick=args.quick, samples=samples, seqlen=seqlen,
           repeats=repeats, met_by_dtype={row["dtype"]: row["ratio"] <= GOAL for row in rows}, rows=rows,
           bfloat16_note=BF16_NOTE)


if __name__ == "__main__":
    main()
