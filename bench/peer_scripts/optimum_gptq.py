"""Run inside the GPTQModel environment, which also holds optimum (bench/peers.py creates it):
optimum's GPTQQuantizer W4 g128 with its defaults on calibscope's ``pt`` export (a list of
{"input_ids", "attention_mask"} 2-D tensors, the one tokenized form optimum takes as it is), writing
each quantized Linear's dequantized weight for calibscope to evaluate.

Usage: python optimum_gptq.py CHECKPOINT EXPORT_FOLDER OUT.safetensors
"""
import sys
import time
from pathlib import Path

import no_torchvision  # noqa: F401  (before GPTQModel: see no_torchvision.py)
import torch
from safetensors.torch import save_file

# isort: split

from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module
from optimum.gptq import GPTQQuantizer
from transformers import AutoModelForCausalLM

checkpoint, export, out = sys.argv[1:4]
samples = torch.load(Path(export) / "calibration.pt")
model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
# Its defaults besides the scheme: damp_percent 0.1, desc_act False with act_group_aware, true_sequential,
# block outputs cached (quantized outputs feed the next block); the math is GPTQModel's GPTQ class.
quantizer = GPTQQuantizer(bits=4, group_size=128, dataset=samples, model_seqlen=max(s["input_ids"].shape[-1] for s in samples))
started = time.perf_counter()
model = quantizer.quantize_model(model, tokenizer=None)
seconds = time.perf_counter() - started
# quantize_model packs in GPTQModel's internal v2 zero points (it sets quantizer.format to "gptq_v2";
# only save() converts to v1) but leaves each module's qzero_format() at its default, 1: the
# quantizer's format, not the module's flag, says whether the v1 -> v2 conversion is due. Converting
# on the flag shifted every weight by one grid step (relative error 0.44 instead of 0.14).
packed_as_v1 = quantizer.format == "gptq"
weights = {}
for name, module in model.named_modules():
    if hasattr(module, "dequantize_weight") and hasattr(module, "qweight"):
        if packed_as_v1:
            convert_gptq_v1_to_v2_format_module(module, bits=module.bits, pack_dtype=module.pack_dtype)
        weight = module.dequantize_weight().float()
        if weight.shape != (module.out_features, module.in_features):
            weight = weight.T
        weights[name] = weight.contiguous()
save_file(weights, out, metadata={"seconds": f"{seconds:.2f}"})
print(f"optimum GPTQ: {len(weights)} layers in {seconds:.1f} s")
