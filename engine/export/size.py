"""How many bytes a quantized checkpoint will take, before it is written: the quantized layers at
their format's bits per weight with their scales and zero points, every other tensor in the
checkpoint's dtype. What a disk quota is asked for, and what a download cap compares."""
from __future__ import annotations

from engine.export.checkpoint import CheckpointDtype, stored_dtype
from engine.export.transforms import transform_bytes
from engine.models import LoadedModel
from engine.quant import QuantSpec, quantizable_layers

MARGIN = 1.02  # config, tokenizer and safetensors headers


def _bits_per_weight(spec: QuantSpec, scale_bytes: int) -> float:
    weights = spec.weights
    if weights.format.is_float:
        block = weights.format.block
        return weights.format.bits + (8 / block if block else 0)  # an FP8 scale per block of 16 (NVFP4) or 32 (MXFP4)
    group = weights.group_size or None
    per_group = scale_bytes * 8 * (1 if weights.symmetric else 2)  # a zero point counted as a scale: an upper bound
    return weights.bits + (per_group / group if group else 0)


def estimated_checkpoint_bytes(loaded: LoadedModel, spec: QuantSpec,
                               dtype: CheckpointDtype | str = CheckpointDtype.BFLOAT16) -> int:
    """The checkpoint's size: every quantized layer at the spec's bits per weight, the rest (and the
    scales) in the checkpoint's ``dtype`` (tied tensors counted once)."""
    model = loaded.model
    layers = quantizable_layers(model, spec)
    quantized = sum(layer.module.weight.numel() for layer in layers)
    seen, total = set(), 0
    for parameter in model.parameters():
        if parameter.data_ptr() in seen and parameter.device.type != "meta":
            continue
        seen.add(parameter.data_ptr())
        total += parameter.numel()
    itemsize = stored_dtype(loaded, dtype).itemsize
    per_channel = sum(layer.out_features for layer in layers) * itemsize * 2
    rotations = transform_bytes(loaded, spec, stored_dtype(loaded, dtype))
    return int(MARGIN * ((total - quantized) * itemsize + quantized * _bits_per_weight(spec, itemsize) / 8 + per_channel
                         + rotations))
