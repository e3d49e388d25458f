"""Run inside llm-compressor's own environment (bench/peers.py creates it): its QuantizationModifier
oneshot with one of its float presets (FP8: weights per tensor, inputs static per tensor with the
static min-max observer; NVFP4: e4m3 block scales under global scales, inputs' global scale from
the static min-max observer) on calibscope's exported windows, saved compressed as llm-compressor
saves it, for bench/peers.py to read back (scales and weights) and evaluate beside calibscope's.

Usage: python llmcompressor_float.py CHECKPOINT WINDOWS.jsonl OUT_FOLDER SCHEME
"""
import json
import sys
import time

import datasets
import torch
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
from transformers import AutoModelForCausalLM, AutoTokenizer

checkpoint, windows, out, scheme = sys.argv[1:5]
model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
samples = datasets.Dataset.from_json(windows).select_columns(["input_ids", "attention_mask"])
started = time.perf_counter()
oneshot(model=model, dataset=samples, processor=tokenizer,
        recipe=QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"]),
        num_calibration_samples=len(samples), max_seq_length=max(len(ids) for ids in samples["input_ids"]))
seconds = time.perf_counter() - started
model.save_pretrained(out, save_compressed=True)
tokenizer.save_pretrained(out)
with open(f"{out}/oneshot.json", "w") as file:
    json.dump({"seconds": seconds, "scheme": scheme}, file)
print(f"llm-compressor {scheme} wrote {out} in {seconds:.1f} s")
