"""Run inside GPTQModel's own environment (bench/peers.py creates it): its GPTQ W4 g128 with its
defaults on calibscope's exported windows, writing each quantized Linear's dequantized weight for
calibscope to evaluate.

Usage: python gptqmodel_gptq.py CHECKPOINT WINDOWS.jsonl OUT.safetensors
"""
import sys
import time

import datasets
import no_torchvision  # noqa: F401  (before GPTQModel: see no_torchvision.py)
import torch
from safetensors.torch import save_file

# isort: split

from gptqmodel import GPTQModel, QuantizeConfig
from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module

checkpoint, windows, out = sys.argv[1:4]
samples = datasets.Dataset.from_json(windows)
calibration = [{"input_ids": ids, "attention_mask": mask} for ids, mask in zip(samples["input_ids"], samples["attention_mask"])]
# Its defaults besides the scheme: damp_percent 0.05 (+0.01 on a failed Cholesky), desc_act False with
# act_group_aware reordering, Hessian normalised per token; no disk offload on this small model.
config = QuantizeConfig(bits=4, group_size=128, offload_to_disk=False)
model = GPTQModel.load(checkpoint, config, device="cpu", dtype=torch.float32)
started = time.perf_counter()
model.quantize(calibration, batch_size=1)
seconds = time.perf_counter() - started
weights = {}
for name, module in model.model.named_modules():
    if hasattr(module, "dequantize_weight") and hasattr(module, "qweight"):
        if module.qzero_format() == 1:  # packed as "gptq" v1 (zero points stored minus one): its dequantizer reads v2
            convert_gptq_v1_to_v2_format_module(module, bits=module.bits, pack_dtype=module.pack_dtype)
        weight = module.dequantize_weight().float()
        if weight.shape != (module.out_features, module.in_features):
            weight = weight.T  # GPTQ packs columns-first: [in, out]
        weights[name] = weight.contiguous()
save_file(weights, out, metadata={"seconds": f"{seconds:.2f}"})
print(f"GPTQModel GPTQ: {len(weights)} layers in {seconds:.1f} s; config {config.to_dict()}")
