"""Run inside llm-compressor's own environment (bench/peers.py creates it): its QuantizationModifier
oneshot with one of its float presets (FP8: weights per tensor, inputs static per tensor with the
static min-max observer; NVFP4: e4m3 block scales under global scales, inputs' global scale from
the static min-max observer) on calibscope's exported windows, saved compressed as llm-compressor
saves it, for bench/peers.py to read back (scales and weights) and evaluate beside calibscope's.

Usage: python llmcompressor_float.py CHECKPOINT WINDOWS.jsonl OUT_FOLDER SCHEME
"""
import sys

from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor_oneshot import compressed_oneshot

checkpoint, windows, out, scheme = sys.argv[1:5]
seconds = compressed_oneshot(checkpoint, windows, out, QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"]),
                             {"scheme": scheme})
print(f"llm-compressor {scheme} wrote {out} in {seconds:.1f} s")
