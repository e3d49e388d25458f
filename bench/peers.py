"""calibscope's GPTQ beside llm-compressor's, on the same windows, evaluated by one perplexity routine.

What it installs, outside calibscope's environment: a virtual environment per peer under
``$CALIBSCOPE_CACHE/peers/<tool>`` with ``torch==2.13.0`` (the CPU build where that is the local
wheel) and the peer pinned (``llmcompressor==0.14.0.1``, which needs transformers <= 5.17: it can
never share calibscope's environment). The peer gets the builtin Gemma as the plain checkpoint
directory calibscope keeps in its weight cache (not the GGUF, which transformers 5.17 mis-loads)
and calibscope's 32 x 512 windows as JSON lines (``input_ids``, ``attention_mask``), runs its GPTQ
W4 g128 (``bench/peer_scripts/<tool>_gptq.py``) and writes its fake-quantized Linear weights; calibscope
evaluates them with the same held-out windows and perplexity routine as its own presets.

Prints a table and ``{"bench": "peers_gptq", "metric": "ppl_ratio_calibscope_vs_llmcompressor", ...}``:
calibscope's llm-compressor preset run sequentially (llm-compressor's pipeline is sequential) over
llm-compressor's own result. GPTQModel and optimum are not run yet.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import _isolate  # noqa: F401  (first: see bench/_isolate.py)
import datasets
from safetensors import safe_open
from safetensors.torch import load_file

from bench._common import report
from bench.gptq_presets import quantized_perplexity, windows
from engine import ModelSpec, load_model
from engine.models.builtin import cached_checkpoint
from engine.models.weight_cache import cache_root
from engine.quant import PRESETS
from engine.quant.apply import QuantizedModel
from engine.quant.block_gptq import gptq_block_by_block
from engine.quant.perplexity import perplexity
from engine.quant.plan import plan_quantization, quantizable_layers
from engine.stats.hessian_report import collect_hessians
from engine.stats.specs import HessianSpec

PEERS = {"llmcompressor": ["llmcompressor==0.14.0.1"]}
HERE = Path(__file__).resolve().parent


def environment(tool: str) -> Path:
    """The peer's own virtual environment, made once; returns its python."""
    folder = cache_root() / "peers" / tool
    python = folder / "bin" / "python"
    if not (folder / "ready").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS[tool]], check=True)
        (folder / "ready").write_text("\n".join(PEERS[tool]))
    return python


def peer_weights(tool: str, checkpoint: Path, calibration, work: Path) -> tuple[QuantizedModel, float]:
    exported = work / "windows.jsonl"
    datasets.Dataset.from_dict({"input_ids": [s.tolist() for s in calibration.sequences],
                                "attention_mask": [[1] * len(s) for s in calibration.sequences]}).to_json(str(exported))
    out = work / f"{tool}.safetensors"
    subprocess.run([str(environment(tool)), str(HERE / "peer_scripts" / f"{tool}_gptq.py"), str(checkpoint), str(exported), str(out)],
                   check=True)
    plan = QuantizedModel()
    plan.weights.update(load_file(out))
    with safe_open(out, "pt") as opened:
        seconds = float(opened.metadata()["seconds"])
    return plan, seconds


def main() -> None:
    loaded = load_model(ModelSpec("builtin:gemma-3-270m"))
    checkpoint, _, _ = cached_checkpoint("builtin:gemma-3-270m", lambda *_: None)
    calibration, evaluation = windows(loaded)
    work = cache_root() / "bench" / "peers"
    work.mkdir(parents=True, exist_ok=True)
    rows = [{"tool": "float", "scheme": "-", "perplexity": perplexity(loaded, evaluation), "seconds": None}]
    spec = PRESETS["W4 g128 GPTQ (llm-compressor)"]
    started = time.perf_counter()
    hessians = collect_hessians(loaded, calibration, HessianSpec(diagnostics="none"))
    plan, _ = plan_quantization(quantizable_layers(loaded.model, spec), spec, None, hessians, output_errors=False)
    rows.append({"tool": "calibscope", "scheme": "llm-compressor preset, one pass", "seconds": round(time.perf_counter() - started, 1),
                 "perplexity": quantized_perplexity(loaded, plan, evaluation)})
    started = time.perf_counter()
    plan, _ = gptq_block_by_block(loaded, calibration, spec, propagate=True)
    rows.append({"tool": "calibscope", "scheme": "llm-compressor preset, sequential", "seconds": round(time.perf_counter() - started, 1),
                 "perplexity": quantized_perplexity(loaded, plan, evaluation)})
    plan, seconds = peer_weights("llmcompressor", checkpoint, calibration, work)
    rows.append({"tool": "llm-compressor 0.14.0.1", "scheme": "GPTQModifier W4A16 (sequential)", "seconds": round(seconds, 1),
                 "perplexity": quantized_perplexity(loaded, plan, evaluation)})
    for row in rows:
        print(row)
    ratio = rows[2]["perplexity"] / rows[3]["perplexity"]
    report("peers_gptq", "ppl_ratio_calibscope_vs_llmcompressor", round(ratio, 4), "<= 1.00 (llm-compressor preset, sequential)",
           ratio <= 1.0, rows=rows, calibration="32 x 512 gptq-windows, wikitext-2 test first 80%",
           evaluation="16 x 512, wikitext-2 test last 20%")


if __name__ == "__main__":
    main()
