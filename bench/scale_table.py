"""The per-shape table of bench/scale.py --table: speed and memory of every pass on one device.

For each shape, a random bf16 model built from its config directly in memory (on the GPU, or in CPU
memory for the offloaded runs), 128 x 2048 tokens (--quick: 2 blocks, 4 x 64): seconds of a bare
head-less forward, of full statistics, of every Hessian and of GPTQ W4 g128 over all layers, their
ratios to the forward, and peak device memory during the Hessians: whole model on the device, and
block by block with the weights in CPU memory (what a model larger than the GPU needs).
"""
from __future__ import annotations

import torch

from bench._checkpoints import SHAPES, config_for
from bench._common import report, timed
from engine import CorpusSpec, load_corpus
from engine.models import ResidentWeights, byte_tokenizer, from_model
from engine.quant import PRESETS, Calibrated, quantize
from engine.sampling import CalibrationSet, PackedSpec, build
from engine.stats import HessianSpec, StatsSpec, collect, collect_hessians

GIB = 2**30


def random_model(shape: str, layers: int | None, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config_for(shape, layers), dtype=dtype)
    for name, parameter in model.named_parameters():  # initialized weights of plausible scale, norms at 1
        with torch.no_grad():
            parameter.copy_(torch.ones_like(parameter) if parameter.dim() == 1 else torch.randn_like(parameter) * 0.02)
    return from_model(model, byte_tokenizer(), name=f"random {shape}")


def token_windows(loaded, samples: int, length: int) -> CalibrationSet:
    """``samples`` packed blocks of exactly ``length`` byte tokens of the builtin corpus (what the
    tokens are does not change the cost of a pass)."""
    return build(load_corpus(CorpusSpec.builtin("mixed")), loaded.tokenizer, PackedSpec(nsamples=samples, length=length))


def peak_gib(device: str, run) -> tuple[float, float, object]:
    """(seconds, peak device memory in GiB, result) of ``run``; no peak on the CPU."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds, result = timed(device, run)
    return seconds, (torch.cuda.max_memory_allocated() / GIB if device.startswith("cuda") else float("nan")), result


def bare_forward(loaded, calibration, batch_size: int = 8) -> None:
    with torch.inference_mode():
        for batch in calibration.batches(batch_size, by_length=True):
            loaded.model.base_model(**{k: v.to(loaded.device) for k, v in batch.items()}, use_cache=False)


def measure_shape(shape: str, device: str, quick: bool) -> dict:
    layers, samples, length = (2, 4, 64) if quick else (None, 128, 2048)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    loaded = random_model(shape, layers, device, dtype)
    data = token_windows(loaded, samples, length)
    bare_forward(loaded, data)  # warm-up
    forward_s, _ = timed(device, lambda: bare_forward(loaded, data))
    stats_s, _ = timed(device, lambda: collect(loaded, data, StatsSpec(execution="whole-model")))
    whole_spec = HessianSpec(diagnostics="none", execution="whole-model")
    hessian_s, hessian_peak, hessians = peak_gib(device, lambda: collect_hessians(loaded, data, whole_spec))
    scheme = PRESETS["W4 g128 GPTQ"]
    gptq_s, _ = timed(device, lambda: quantize(loaded, scheme, Calibrated(hessians=hessians)))
    hessians = loaded = None  # free the device for the offloaded run
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    offloaded = random_model(shape, layers, "cpu", dtype)  # weights in CPU memory, one block on the device at a time
    offloaded.device, offloaded.weights = torch.device(device), ResidentWeights(torch.device("cpu"))
    block_spec = HessianSpec(diagnostics="none", keep=False, execution="block-by-block")
    blockwise_s, blockwise_peak, _ = peak_gib(device, lambda: collect_hessians(offloaded, data, block_spec))
    return {"shape": shape, "tokens": int(data.lengths.sum()), "forward_s": round(forward_s, 2),
            "statistics_ratio": round(stats_s / forward_s, 2), "hessians_ratio": round(hessian_s / forward_s, 2),
            "hessians_s": round(hessian_s, 2), "hessians_peak_gib": round(hessian_peak, 2), "gptq_s": round(gptq_s, 1),
            "blockwise_hessians_s": round(blockwise_s, 2), "blockwise_peak_gib": round(blockwise_peak, 2)}


def table(device: str, quick: bool) -> None:
    rows = [measure_shape(shape, device, quick) for shape in ("gemma-3-270m", "llama-3.2-1b", "llama-3.1-8b")]
    eight_b = rows[-1]
    goals = {"statistics_ratio": 1.3, "hessians_ratio": 2.0, "gptq_s": 60.0, "blockwise_peak_gib": 20.0}
    met = all(eight_b[key] <= limit for key, limit in goals.items())
    report("scale_table", "8b shape: hessians seconds / bare forward seconds", eight_b["hessians_ratio"],
           "stats <= 1.3x, hessians <= 2.0x, gptq <= 60 s, block-by-block peak <= 20 GiB (8B, 128 x 2048, H100)", met,
           device=device, quick=quick, dtype="bfloat16" if device.startswith("cuda") else "float32", rows=rows,
           shapes={name: SHAPES[name]["hidden_size"] for name in SHAPES},
           not_run="70B shape: 140 GB of bf16 weights do not fit this machine's CPU memory or disk")
