"""Run inside llm-compressor's own environment (bench/peers.py creates it): SmoothQuantModifier
(smoothing_strength 0.5, its default) then QuantizationModifier W8A8 (int8 weights per channel,
int8 inputs dynamic per token), or W8A8 alone, on calibscope's exported windows; saved compressed
as llm-compressor saves it, for bench/peers.py to read back (weights, smoothed norms) and evaluate.

MAPPINGS: "none" (W8A8 alone), "default" (what llm-compressor infers for Gemma 3, which is not in
its registry: its Llama mappings, the MLP balanced against post_attention_layernorm), or "gemma"
(the norm Gemma 3's MLP reads: pre_feedforward_layernorm).

Usage: python llmcompressor_smoothquant.py CHECKPOINT WINDOWS.jsonl OUT_FOLDER MAPPINGS
"""
import sys

from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
from llmcompressor_oneshot import compressed_oneshot

ATTENTION = [["re:.*q_proj", "re:.*k_proj", "re:.*v_proj"], "re:.*input_layernorm"]
MAPPINGS = {"default": None, "gemma": [ATTENTION, [["re:.*gate_proj", "re:.*up_proj"], "re:.*pre_feedforward_layernorm"]]}

checkpoint, windows, out, mappings = sys.argv[1:5]
recipe = [QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])]
if mappings != "none":
    recipe.insert(0, SmoothQuantModifier(smoothing_strength=0.5, mappings=MAPPINGS[mappings]))
seconds = compressed_oneshot(checkpoint, windows, out, recipe, {"mappings": mappings})
print(f"llm-compressor W8A8 ({mappings} smoothing) wrote {out} in {seconds:.1f} s")
