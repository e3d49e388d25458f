"""calibscope's GPTQ beside llm-compressor's, GPTQModel's and optimum's, on the same windows,
every result evaluated by one perplexity routine on the same held-out windows.

What it installs, outside calibscope's environment (``$CALIBSCOPE_CACHE/peers/<env>``, made once):
- ``llmcompressor``: ``torch==2.13.0`` + ``llmcompressor==0.14.0.1`` (pins transformers <= 5.17, so it
  can never share calibscope's environment);
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
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import _isolate  # noqa: F401  (first: see bench/_isolate.py)
import pandas as pd
from safetensors import safe_open
from safetensors.torch import load_file

from bench._common import report
from bench.gptq_presets import quantized_perplexity, windows
from engine import ModelSpec, load_model
from engine.export import ExportFormat, save_calibration_set
from engine.models.builtin import cached_checkpoint
from engine.models.weight_cache import cache_root
from engine.quant import PRESETS
from engine.quant.apply import QuantizedModel
from engine.quant.block_gptq import gptq_block_by_block
from engine.quant.perplexity import perplexity
from engine.quant.plan import plan_quantization
from engine.stats.hessian_report import collect_hessians
from engine.stats.specs import HessianSpec

ENVIRONMENTS = {"llmcompressor": ["llmcompressor==0.14.0.1"],
                "gptqmodel": ["gptqmodel==7.3.6", "optimum==2.3.0", "requests"]}
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
        outside = {"check": True, "cwd": cache_root()}
        subprocess.run([sys.executable, "-m", "venv", str(folder)], **outside)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], **outside)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *ENVIRONMENTS[name]], **outside)
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


def main() -> None:
    # the peers' scripts load the checkpoint in float32: calibscope runs in the same dtype (on a CPU
    # with native bf16, dtype auto would pick bf16 and compare other arithmetic)
    loaded = load_model(ModelSpec("builtin:gemma-3-270m", dtype=PEER_DTYPE))
    checkpoint, _, _ = cached_checkpoint("builtin:gemma-3-270m", lambda *_: None)
    calibration, evaluation = windows(loaded)
    work = cache_root() / "bench" / "peers"
    work.mkdir(parents=True, exist_ok=True)
    rows = [{"tool": "float", "scheme": "-", "perplexity": perplexity(loaded, evaluation), "seconds": None}]
    spec = PRESETS["W4 g128 GPTQ"]
    started = time.perf_counter()
    hessians = collect_hessians(loaded, calibration, HessianSpec(diagnostics="none"))
    plan, _ = plan_quantization(loaded, spec, None, hessians, output_errors=False)
    rows.append({"tool": "calibscope", "scheme": "W4 g128 GPTQ (default = llm-compressor's), one pass",
                 "seconds": round(time.perf_counter() - started, 1), "perplexity": quantized_perplexity(loaded, plan, evaluation)})
    for scheme in ("W4 g128 GPTQ", "W4 g128 GPTQ (gptqmodel)", "W4 g128 GPTQ (optimum)"):
        started = time.perf_counter()
        plan, _ = gptq_block_by_block(loaded, calibration, PRESETS[scheme], propagate=True, output_errors=False)
        rows.append({"tool": "calibscope", "scheme": sequential_label(scheme), "seconds": round(time.perf_counter() - started, 1),
                     "perplexity": quantized_perplexity(loaded, plan, evaluation)})
        print(rows[-1], flush=True)
    for tool, label in (("llmcompressor", "llm-compressor 0.14.0.1: GPTQModifier W4A16"),
                        ("gptqmodel", "GPTQModel 7.3.6: QuantizeConfig(bits=4, group_size=128)"),
                        ("optimum", "optimum 2.3.0: GPTQQuantizer(bits=4, group_size=128)")):
        plan, seconds = peer_weights(tool, checkpoint, calibration, loaded.tokenizer, work)
        rows.append({"tool": tool, "scheme": label, "seconds": round(seconds, 1), "perplexity": quantized_perplexity(loaded, plan, evaluation)})
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
           "preset, sequential)", ratio <= 1.0 and seconds_ratio <= SECONDS_GOAL, dtype=loaded.info.dtype, device=loaded.info.device,
           reused={"peer environments": "made once under the cache (no timing depends on them)",
                   "checkpoint": "the builtin model's converted checkpoint from the weight cache (no timing depends on it)"},
           met_by_goal={"perplexity": ratio <= 1.0, "seconds": seconds_ratio <= SECONDS_GOAL},
           seconds_ratio_calibscope_vs_llmcompressor=round(seconds_ratio, 3),
           seconds_ratio_one_pass_vs_llmcompressor=round(seconds[one_pass] / seconds[theirs], 3),
           ppl_ratio_one_pass_vs_llmcompressor=round(ppl[one_pass] / ppl[theirs], 4), **presets, rows=rows,
           calibration="32 x 512 gptq-windows, wikitext-2 test first 80%", evaluation="16 x 512, wikitext-2 test last 20%")


if __name__ == "__main__":
    main()
