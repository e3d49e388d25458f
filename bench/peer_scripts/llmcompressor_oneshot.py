"""What the llm-compressor peer scripts share (imported from their folder, inside llm-compressor's own
environment): its oneshot on calibscope's exported windows, the model then saved compressed as
llm-compressor saves it, with the oneshot's seconds and ``record`` in ``OUT/oneshot.json``."""
import json
import time

import datasets
import torch
from llmcompressor import oneshot
from transformers import AutoModelForCausalLM, AutoTokenizer


def compressed_oneshot(checkpoint: str, windows: str, out: str, recipe, record: dict) -> float:
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    samples = datasets.Dataset.from_json(windows).select_columns(["input_ids", "attention_mask"])
    started = time.perf_counter()
    oneshot(model=model, dataset=samples, processor=tokenizer, recipe=recipe,
            num_calibration_samples=len(samples), max_seq_length=max(len(ids) for ids in samples["input_ids"]))
    seconds = time.perf_counter() - started
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    with open(f"{out}/oneshot.json", "w") as file:
        json.dump({"seconds": seconds, **record}, file)
    return seconds
