"""Run inside llm-compressor's own environment (bench/peers.py creates it): its QuantizationModifier
oneshot with the FP8 preset and an FP8 KV cache (kv_cache_scheme: 8-bit float, symmetric, static,
per tensor or attn_head, with the observer asked for: "static_minmax", the set's |max|, or "minmax",
its default, a moving average of each call's range) on calibscope's exported windows, saved
compressed as llm-compressor saves it, for bench/peers.py to read back and evaluate.

Usage: python llmcompressor_kv.py CHECKPOINT WINDOWS.jsonl OUT_FOLDER STRATEGY OBSERVER
"""
import sys

from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor_oneshot import compressed_oneshot

checkpoint, windows, out, strategy, observer = sys.argv[1:6]
kv_cache = {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, "strategy": strategy, "observer": observer}
recipe = QuantizationModifier(targets="Linear", scheme="FP8", ignore=["lm_head"], kv_cache_scheme=kv_cache)
seconds = compressed_oneshot(checkpoint, windows, out, recipe, {"kv_cache_scheme": kv_cache})
print(f"llm-compressor FP8 + KV {strategy} ({observer}) wrote {out} in {seconds:.1f} s")
