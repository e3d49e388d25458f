"""Run inside llm-compressor's own environment (bench/peers.py creates it): its GPTQ W4A16 on
calibscope's exported windows, saved as llm-compressor saves it (compressed-tensors), for
bench/checkpoint.py to compare with calibscope's checkpoint file by file.

Usage: python llmcompressor_checkpoint.py CHECKPOINT WINDOWS.jsonl OUT_FOLDER
"""
import sys

import datasets
import torch
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier
from transformers import AutoModelForCausalLM, AutoTokenizer

checkpoint, windows, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
tokenizer = AutoTokenizer.from_pretrained(checkpoint)
samples = datasets.Dataset.from_json(windows).select_columns(["input_ids", "attention_mask"])
oneshot(model=model, dataset=samples, processor=tokenizer,
        recipe=GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
        num_calibration_samples=len(samples), max_seq_length=max(len(ids) for ids in samples["input_ids"]))
model.save_pretrained(out, save_compressed=True)
tokenizer.save_pretrained(out)
print(f"llm-compressor wrote {out}")
