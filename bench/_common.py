"""Shared plumbing for bench scripts: result files and the one-line JSON summary."""
from __future__ import annotations

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
