"""Run inside ModelOpt's own environment (bench/peers.py creates it): nvidia-modelopt 0.47's
calibration of every Linear layer's input on calibscope's exported windows, each window one
forward: FP8 (mtq.FP8_DEFAULT_CFG) with its max calibrator, and int8 (mtq.INT8_DEFAULT_CFG) with its
histogram calibrator finished by the entropy method (ModelOpt's entropy takes integer bit widths
only, so not FP8's). Writes each layer's input amax per calibration, for bench/peers.py to compare
with calibscope's.

Usage: python modelopt_calibration.py CHECKPOINT WINDOWS.jsonl OUT.json
"""
import copy
import json
import sys
import time

import datasets
import modelopt.torch.quantization as mtq
import torch
from modelopt.torch.quantization.model_calib import enable_stats_collection, finish_stats_collection
from transformers import AutoModelForCausalLM

checkpoint, windows, out = sys.argv[1:4]
samples = datasets.Dataset.from_json(windows)
batches = [torch.tensor([ids]) for ids in samples["input_ids"]]


def forward_loop(model):
    with torch.no_grad():
        for ids in batches:
            model(input_ids=ids)


def input_amax(model) -> dict[str, float]:
    return {name: float(module.input_quantizer.amax) for name, module in model.named_modules()
            if hasattr(module, "input_quantizer") and getattr(module.input_quantizer, "amax", None) is not None
            and not name.endswith("lm_head")}


results = {}
for label, config, method in (("fp8_max", mtq.FP8_DEFAULT_CFG, "max"), ("int8_entropy", mtq.INT8_DEFAULT_CFG, "entropy")):
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    started = time.perf_counter()
    if method == "max":
        mtq.quantize(model, config, forward_loop)
    else:
        histogram = copy.deepcopy(config)
        for entry in histogram["quant_cfg"]:  # 0.47: a list of {quantizer_name, cfg} entries
            if entry.get("quantizer_name") == "*input_quantizer":
                entry["cfg"]["calibrator"] = "histogram"
            if entry.get("quantizer_name") == "*weight_quantizer":  # inputs only: weights keep max calibrators
                entry.pop("cfg", None)
                entry["enable"] = False
        histogram["algorithm"] = None  # quantizers inserted, nothing calibrated yet
        mtq.quantize(model, histogram, None)
        enable_stats_collection(model)
        forward_loop(model)
        finish_stats_collection(model, method="entropy")
    results[label] = {"seconds": time.perf_counter() - started, "input_amax": input_amax(model)}
    print(f"ModelOpt {label}: {len(results[label]['input_amax'])} inputs in {results[label]['seconds']:.1f} s", flush=True)
with open(out, "w") as file:
    json.dump(results, file)
