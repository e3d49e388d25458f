"""calibscope's quantization as a compressed-tensors checkpoint: the format llm-compressor writes,
vLLM serves (CompressedTensorsWNA16 for W4/W8 A16, CompressedTensorsW8A8Int8) and transformers
loads through the same package.

The scheme is described with compressed-tensors' own config classes and each layer is compressed by
its own compressor (``infer_module_format`` picks it as llm-compressor does: pack-quantized for
weight-only, int-quantized for W8A8). The compressor rounds the float weight on the scales it is
given, so it is handed W = scale · (code - zero) in float32 with the scale already rounded to the
storage dtype: it gives back exactly calibscope's integers, and the checkpoint dequantizes to
calibscope's simulated weights (exactly in float32; within the scale's rounding in bfloat16).
"""
from __future__ import annotations

import warnings

import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.compressors.format import infer_module_format
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme, QuantizationStatus

from engine.errors import ExportError
from engine.quant.grid import Grid, IntWeight
from engine.quant.specs import ActOrder, Granularity, QuantSpec, WeightMethod

# What vLLM's compressed-tensors loader serves (vllm/model_executor/layers/quantization/compressed_tensors:
# WNA16_SUPPORTED_TYPES_MAP / WNA16_ZP_SUPPORTED_TYPES_MAP and the W8A8 int8 scheme's checks).
VLLM_WEIGHT_ONLY_BITS = (4, 8)
VLLM_W8A8_INPUTS = "8-bit, per tensor"


def refusal(spec: QuantSpec) -> str | None:
    """Why ``spec`` cannot be written as compressed-tensors (None: it can)."""
    weights, inputs = spec.weights, spec.activations
    if not weights.enabled:
        return ("Activation-only quantization has no compressed-tensors form that keeps float weights; quantize the "
                "weights too (e.g. W8A8) to export.")
    if weights.needs_hessians and weights.act_order is ActOrder.DYNAMIC and weights.group_size:
        return ("compressed-tensors 0.20 no longer stores activation order 'group' (the g_idx of act order dynamic). "
                "Use act order static (the same inference cost, groups in the weight's order), or write the GPTQ "
                "format, which stores g_idx.")
    if inputs.enabled and inputs.granularity is Granularity.CHANNEL:
        return ("compressed-tensors has no static per-input-channel activation scale that vLLM serves; use per-tensor "
                "activation ranges to export.")
    return None


def vllm_warning(spec: QuantSpec) -> str | None:
    """Why vLLM's compressed-tensors loader finds no scheme for ``spec`` (None: it serves it)."""
    weights, inputs = spec.weights, spec.activations
    if not inputs.enabled and weights.bits not in VLLM_WEIGHT_ONLY_BITS:
        return (f"vLLM serves weight-only compressed-tensors of {' or '.join(map(str, VLLM_WEIGHT_ONLY_BITS))} bits, "
                f"not this {weights.bits}-bit checkpoint.")
    if inputs.enabled and (inputs.bits != 8 or weights.bits != 8):
        return (f"vLLM's int8 W8A8 kernels take 8-bit weights and {VLLM_W8A8_INPUTS} static inputs, not "
                f"W{weights.bits}A{inputs.bits}.")
    return None


def transformers_warning(spec: QuantSpec) -> str | None:
    """Why transformers (with compressed-tensors 0.20) cannot load ``spec``'s checkpoint (None: it can)."""
    if not spec.weights.symmetric and not spec.activations.enabled:
        return ("transformers with compressed-tensors 0.20 cannot load the packed zero points of asymmetric "
                "pack-quantized checkpoints, llm-compressor's included (llm-compressor issue 1618); vLLM reads them.")
    return None


def serving_warning(spec: QuantSpec) -> str | None:
    """What a loader will refuse in a checkpoint that can still be written (None: all of them load it)."""
    return " ".join(note for note in (vllm_warning(spec), transformers_warning(spec)) if note) or None


def weight_args(spec: QuantSpec) -> QuantizationArgs:
    weights = spec.weights
    static = weights.method is WeightMethod.GPTQ and weights.act_order is ActOrder.STATIC
    # observer: llm-compressor's name for a grid from each group's min and max, as calibscope's are found
    return QuantizationArgs(num_bits=weights.bits, type="int", symmetric=weights.symmetric,
                            strategy="group" if weights.group_size else "channel", group_size=weights.group_size or None,
                            actorder="static" if static else None, dynamic=False, observer="memoryless_minmax",
                            zp_dtype=None if weights.symmetric else torch.int8)


def input_args(spec: QuantSpec) -> QuantizationArgs | None:
    inputs = spec.activations
    if not inputs.enabled:
        return None
    return QuantizationArgs(num_bits=inputs.bits, type="int", symmetric=inputs.symmetric, strategy="tensor", dynamic=False,
                            zp_dtype=None if inputs.symmetric else torch.int8)


def scheme(spec: QuantSpec) -> QuantizationScheme:
    """The one config group every quantized Linear layer belongs to, with the format its compressor writes."""
    reason = refusal(spec)
    if reason:
        raise ExportError(reason)
    described = QuantizationScheme(targets=["Linear"], weights=weight_args(spec), input_activations=input_args(spec))
    described.format = infer_module_format(torch.nn.Linear, described).value
    return described


def quantization_config(described: QuantizationScheme, ignore: list[str]) -> QuantizationConfig:
    """config.json's ``quantization_config`` (written by compressed-tensors' ModelCompressor)."""
    return QuantizationConfig(config_groups={"group_0": described}, format=described.format,
                              quantization_status=QuantizationStatus.COMPRESSED, ignore=ignore)


def _signed(values: torch.Tensor, bits: int) -> torch.Tensor:
    """calibscope's unsigned zero points (0..2^b - 1) in compressed-tensors' signed convention."""
    return (values.float() - 2 ** (bits - 1)).to(torch.int8)


def compressed_layer(name: str, integers: IntWeight, inputs: Grid | None, described: QuantizationScheme,
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One layer's tensors as its compressor writes them (``name.weight_packed``, ``name.weight_scale`` ...)."""
    grids = integers.grids
    columns = integers.codes.shape[1]
    if grids.group_size and columns % grids.group_size:
        raise ExportError(f"compressed-tensors stores groups that divide a layer's inputs, and {name} has {columns} inputs "
                          f"for groups of {grids.group_size}; quantize with a group size that divides every layer's "
                          "inputs (e.g. 32), or per channel (group size 0).")
    scale = grids.scale.to(dtype).float()  # the scale as stored: the compressor rounds on it
    stored = IntWeight(integers.codes, type(grids)(scale, grids.zero, grids.bits, grids.group_size, grids.symmetric))
    state = {"weight": stored.dequantize(), "weight_scale": scale}
    if not grids.symmetric:
        state["weight_zero_point"] = _signed(grids.zero, grids.bits)
    if inputs is not None:
        state["input_scale"] = inputs.scale.reshape(1).float()
        if not described.input_activations.symmetric:
            state["input_zero_point"] = _signed(inputs.zero.reshape(1), described.input_activations.num_bits)
    compressor = BaseCompressor.get_value_from_registry(described.format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compressed = compressor.compress(state, described)
    floats = {"weight_scale", "input_scale"}
    return {f"{name}.{key}": value.to(dtype) if key in floats else value for key, value in compressed.items()}
