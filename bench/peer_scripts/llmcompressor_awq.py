"""Run inside llm-compressor's own environment (bench/peers.py creates it): AWQModifier (its defaults:
duo scaling, a 20-point grid, the mappings it registers for the architecture) then
QuantizationModifier W4A16_ASYM (int4 weights in groups of 128 with zero points, as its AWQ examples
ship), on calibscope's exported windows; saved compressed, with every mapping's chosen scales, grid
errors and ratio in ``OUT/awq_scales.safetensors`` and ``OUT/oneshot.json``.

On a machine without an accelerator 0.14's AWQ stops in ``IntermediatesCache.pin_memory`` ("Cannot
access accelerator device when none is available"): it pins its cached parent inputs unconditionally,
and no setting avoids it. Pinning only speeds up host-to-device copies, so where there is no CUDA it
is replaced by a no-op here (said in oneshot.json); nothing else of llm-compressor is changed.

Usage: python llmcompressor_awq.py CHECKPOINT WINDOWS.jsonl OUT_FOLDER
"""
import sys

import torch
from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.transform.awq import AWQModifier
from llmcompressor.pipelines.cache import IntermediatesCache
from llmcompressor_oneshot import compressed_oneshot
from safetensors.torch import save_file

checkpoint, windows, out = sys.argv[1:4]
patched = not torch.cuda.is_available()
if patched:
    IntermediatesCache.pin_memory = lambda self, batch_index: None

chosen: dict[str, torch.Tensor] = {}
history: list[dict] = []
search = AWQModifier._compute_best_scale


def recorded(self, mapping, fp16_outputs, orig_layer_weights):
    """Its own search, with the scales it returns kept under the smooth layer's name."""
    before = len(self._error_metrics)
    scales = search(self, mapping, fp16_outputs, orig_layer_weights)
    chosen[mapping.smooth_name] = scales.float().contiguous()
    history.extend({**metric, "balance": mapping.balance_names} for metric in self._error_metrics[before:])
    return scales


AWQModifier._compute_best_scale = recorded
recipe = [AWQModifier(duo_scaling=True, n_grid=20),
          QuantizationModifier(targets="Linear", scheme="W4A16_ASYM", ignore=["lm_head"])]
seconds = compressed_oneshot(checkpoint, windows, out, recipe, {"pin_memory_patched": patched, "mappings": history})
save_file(chosen, f"{out}/awq_scales.safetensors")
print(f"llm-compressor AWQ + W4A16_ASYM wrote {out} in {seconds:.1f} s ({len(chosen)} mappings)")
