"""Run inside llm-compressor's own environment (bench/peers.py creates it): its QuIPModifier (the
input rotation "v", a random Hadamard, its defaults) or SpinQuantModifier (R1 and R2, its defaults)
followed by a QuantizationModifier preset (NVFP4 or W4A16), oneshot on calibscope's exported
windows, saved compressed as llm-compressor saves it (with its transform_config), for bench/peers.py
to read back and evaluate. A modifier that fails writes its error to OUT/error.txt, said in the result.

Usage: python llmcompressor_rotations.py CHECKPOINT WINDOWS.jsonl OUT_FOLDER ROTATION SCHEME
"""
import os
import sys
import traceback

from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.transform import QuIPModifier, SpinQuantModifier
from llmcompressor_oneshot import compressed_oneshot

checkpoint, windows, out, rotation, scheme = sys.argv[1:6]
transform = QuIPModifier(rotations=["v"]) if rotation == "quip" else SpinQuantModifier(rotations=["R1", "R2"])
recipe = [transform, QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])]
try:
    seconds = compressed_oneshot(checkpoint, windows, out, recipe, {"rotation": rotation, "scheme": scheme})
except (ValueError, RuntimeError, NotImplementedError, AssertionError, KeyError, TypeError) as error:  # its refusal is the result
    os.makedirs(out, exist_ok=True)
    with open(f"{out}/error.txt", "w") as file:
        file.write(f"{type(error).__name__}: {error}\n\n{traceback.format_exc()}")
    print(f"llm-compressor {rotation} + {scheme} failed: {type(error).__name__}: {error}")
    sys.exit(0)
print(f"llm-compressor {rotation} + {scheme} wrote {out} in {seconds:.1f} s")
