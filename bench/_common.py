"""Shared plumbing for bench scripts: result files and the one-line JSON summary."""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def report(name: str, metric: str, value: float, goal: str, met: bool, **details) -> dict:
    """Write bench/results/NAME.json and print the summary as the last line."""
    summary = {"bench": name, "metric": metric, "value": value, "goal": goal, "met": met, **details, "machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return summary


def sized_run(doc: str, quick: tuple[int, int], full: tuple[int, int], repeats: int,
              parser: argparse.ArgumentParser | None = None) -> tuple[argparse.Namespace, int, int, int]:
    """The usual options (--quick, --repeats) parsed: (args, samples, tokens per sample, repeats)."""
    parser = parser or argparse.ArgumentParser(description=doc)
    parser.add_argument("--quick", action="store_true", help=f"{quick[0]} x {quick[1]} tokens, one repeat")
    parser.add_argument("--repeats", type=int, default=repeats)
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
