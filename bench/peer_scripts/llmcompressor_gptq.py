"""Run inside llm-compressor's own environment (bench/peers.py creates it): its GPTQ W4 g128 on
calibscope's exported windows, writing the fake-quantized Linear weights for calibscope to evaluate.

Usage: python llmcompressor_gptq.py CHECKPOINT WINDOWS.jsonl OUT.safetensors
"""
import sys
import time

import datasets
import torch
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

checkpoint, windows, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
samples = datasets.Dataset.from_json(windows).select_columns(["input_ids", "attention_mask"])
started = time.perf_counter()
# W4A16: 4-bit symmetric weights, groups of 128 columns; its defaults: actorder static, dampening 0.01, block 128
oneshot(model=model, dataset=samples, recipe=GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
        num_calibration_samples=len(samples), max_seq_length=max(len(ids) for ids in samples["input_ids"]))
seconds = time.perf_counter() - started
weights = {}
for name, module in model.named_modules():
    if isinstance(module, torch.nn.Linear) and name != "lm_head":
        weights[name] = module.weight.detach().float().contiguous()  # GPTQ wrote the quantize-dequantized values
save_file(weights, out, metadata={"seconds": f"{seconds:.2f}"})
print(f"llm-compressor GPTQ: {len(weights)} layers in {seconds:.1f} s")
