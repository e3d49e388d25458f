"""Run inside llm-compressor's own environment (bench/peers.py creates it): its QuIPModifier (the
input rotation "v", a random Hadamard, its defaults) or SpinQuantModifier (R1 and R2, its defaults)
followed by a QuantizationModifier preset (NVFP4 or W4A16), oneshot on calibscope's exported
windows, saved compressed as llm-compressor saves it (with its transform_config), for bench/peers.py
to read back and evaluate. A modifier that fails writes its error to OUT/error.txt, said in the result.

Usage: python llmcompressor_rotations.py CHECKPOINT WINDOWS.jsonl OUT_FOLDER ROTATION SCHEME [GROUP]
"""
import os
import sys
import traceback

from compressed_tensors.quantization import QuantizationScheme
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.transform import QuIPModifier, SpinQuantModifier
from llmcompressor_oneshot import compressed_oneshot

checkpoint, windows, out, rotation, scheme = sys.argv[1:6]
group = int(sys.argv[6]) if len(sys.argv) > 6 else None  # the int presets' group size, where 128 does not divide
transform = QuIPModifier(rotations=["v"]) if rotation == "quip" else SpinQuantModifier(rotations=["R1", "R2"])
if group is None or PRESET_SCHEMES[scheme]["weights"].type != "int":
    quantization = QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"])
else:  # the preset with another group size, as a config group
    preset = PRESET_SCHEMES[scheme]
    grouped = QuantizationScheme(targets=["Linear"], weights=preset["weights"].model_copy(update={"group_size": group}),
                                 input_activations=preset.get("input_activations"))
    quantization = QuantizationModifier(config_groups={"group_0": grouped}, ignore=["lm_head"])
recipe = [transform, quantization]
try:
    seconds = compressed_oneshot(checkpoint, windows, out, recipe, {"rotation": rotation, "scheme": scheme})
except (ValueError, RuntimeError, NotImplementedError, AssertionError, KeyError, TypeError) as error:  # its refusal is the result
    os.makedirs(out, exist_ok=True)
    with open(f"{out}/error.txt", "w") as file:
        file.write(f"{type(error).__name__}: {error}\n\n{traceback.format_exc()}")
    print(f"llm-compressor {rotation} + {scheme} failed: {type(error).__name__}: {error}")
    sys.exit(0)
print(f"llm-compressor {rotation} + {scheme} wrote {out} in {seconds:.1f} s")
