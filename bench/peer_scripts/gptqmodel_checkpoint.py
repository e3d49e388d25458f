"""Run inside GPTQModel's own environment (bench/peers.py creates it).

quantize: its GPTQ W4 g128 on calibscope's exported windows, saved in its GPTQ (v1) format, for
bench/checkpoint.py to compare with calibscope's GPTQ checkpoint file by file.
load: a GPTQ checkpoint (calibscope's) read by GPTQModel's own loader; each quantized Linear's
dequantized weight written out, for calibscope to compare with the weights it simulated.

Usage: python gptqmodel_checkpoint.py quantize CHECKPOINT WINDOWS.jsonl OUT_FOLDER
       python gptqmodel_checkpoint.py load FOLDER OUT.safetensors
"""
import sys

import no_torchvision  # noqa: F401  (before GPTQModel: see no_torchvision.py)
import torch
from safetensors.torch import save_file

# isort: split

from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
from gptqmodel.utils.model import convert_gptq_v1_to_v2_format_module


def dequantized(model) -> dict:
    weights = {}
    for name, module in model.model.named_modules():
        if hasattr(module, "dequantize_weight") and hasattr(module, "qweight"):
            if module.qzero_format() == 1:  # still v1 (zero points stored minus one): its dequantizer reads v2
                convert_gptq_v1_to_v2_format_module(module, bits=module.bits, pack_dtype=module.pack_dtype)
            weight = module.dequantize_weight().float()
            if weight.shape != (module.out_features, module.in_features):
                weight = weight.T  # GPTQ packs columns-first: [in, out]
            weights[name] = weight.contiguous()
    return weights


if sys.argv[1] == "quantize":
    import datasets

    checkpoint, windows, out = sys.argv[2:5]
    samples = datasets.Dataset.from_json(windows)
    calibration = [{"input_ids": ids, "attention_mask": mask}
                   for ids, mask in zip(samples["input_ids"], samples["attention_mask"])]
    model = GPTQModel.load(checkpoint, QuantizeConfig(bits=4, group_size=128, offload_to_disk=False), device="cpu",
                           dtype=torch.float32)
    model.quantize(calibration, batch_size=1)
    model.save(out)
    print(f"GPTQModel wrote {out}")
else:
    folder, out = sys.argv[2:4]
    # its kernels: fp16 or bf16 (its CPU default)
    model = GPTQModel.load(folder, device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)
    weights = dequantized(model)
    save_file(weights, out)
    print(f"GPTQModel loaded {folder}: {len(weights)} quantized layers")
