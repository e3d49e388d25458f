"""First (GGUF dequantization) load versus cached (safetensors) load of the builtin model.

Each load runs in a fresh Python process so neither benefits from the other's imports or memory;
the first load uses an empty cache directory. Goal: the cached load at least 8x faster.
Usage: python bench/model_load.py [--quick] [--model builtin:gemma-3-270m]
"""
from __future__ import annotations

import _isolate  # noqa: F401  (first: see bench/_isolate.py)

# isort: split
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import report

CHILD = """
import json, sys
from engine import ModelSpec, load_model
info = load_model(ModelSpec(sys.argv[1])).info
print(json.dumps({"seconds": info.load_seconds, "from_cache": info.from_cache}))
"""


def timed_load(model: str, cache: str) -> dict:
    env = {**os.environ, "CALIBSCOPE_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, model], env=env, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one cached load instead of three (same model)")
    parser.add_argument("--model", default="builtin:gemma-3-270m")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="calibscope-bench-") as cache:
        first = timed_load(args.model, cache)
        cached = [timed_load(args.model, cache) for _ in range(1 if args.quick else 3)]
    assert not first["from_cache"] and all(c["from_cache"] for c in cached)
    cached_seconds = sorted(c["seconds"] for c in cached)[len(cached) // 2]  # median
    ratio = first["seconds"] / cached_seconds
    report(
        "model_load", "first load seconds / cached load seconds", round(ratio, 2), ">= 8", ratio >= 8,
        dtype="auto", device="auto", quick=args.quick, reused={},  # the first load uses an empty cache folder
        model=args.model, first_load_s=round(first["seconds"], 2), cached_load_s=round(cached_seconds, 2),
        cached_runs_s=[round(c["seconds"], 2) for c in cached],
    )


if __name__ == "__main__":
    main()
