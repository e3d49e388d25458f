"""calibscope's quantization as a compressed-tensors checkpoint: the format llm-compressor writes,
vLLM serves (CompressedTensorsWNA16 for W4/W8 A16, CompressedTensorsW8A8Int8) and transformers
loads through the same package.

The scheme is described with compressed-tensors' own config classes and each layer is compressed by
its own compressor (``infer_module_format`` picks it as llm-compressor does: pack-quantized for
weight-only, int-quantized for W8A8). The compressor rounds the float weight on the scales it is
given, so it is handed W = scale · (code - zero) in float32 with the scale already rounded to the
storage dtype: it gives back exactly calibscope's integers, and the checkpoint dequantizes to
calibscope's simulated weights (exactly when it is written in the dtype the model was quantized in;
within the scale's rounding when a float32 model is written in bfloat16, as it is by default).
"""
from __future__ import annotations

import warnings
from dataclasses import replace

import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.compressors.format import infer_module_format
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme, QuantizationStatus

from engine.errors import ExportError
from engine.quant import (
    ActOrder,
    FloatWeight,
    Fp8Inputs,
    Granularity,
    Grid,
    IntWeight,
    KVScales,
    NumberFormat,
    Nvfp4Inputs,
    QuantSpec,
    WeightMethod,
)

# What vLLM's compressed-tensors loader serves (vllm/model_executor/layers/quantization/compressed_tensors:
# compressed_tensors.py's _get_scheme_from_parts, WNA16_SUPPORTED_TYPES_MAP; written down and checked in
# tests/test_vllm_contract.py).
VLLM_WEIGHT_ONLY_BITS = (4, 8)
VLLM_W8A8_INPUTS = "8-bit, per tensor"


def refusal(spec: QuantSpec) -> str | None:
    """Why ``spec`` cannot be written as compressed-tensors (None: it can)."""
    weights, inputs = spec.weights, spec.activations
    if not weights.enabled and spec.activations.enabled:
        return ("Activation-only quantization has no compressed-tensors form that keeps float weights; quantize the "
                "weights too (e.g. W8A8) to export.")
    if not weights.enabled:
        return ("calibscope writes the KV cache's scales beside quantized weights: choose a weight scheme too (FP8 W8A8 "
                "with an FP8 KV cache is the common recipe).")
    if weights.needs_hessians and weights.act_order is ActOrder.DYNAMIC and weights.group_size:
        return ("compressed-tensors 0.20 no longer stores activation order 'group' (the g_idx of act order dynamic). "
                "Use act order static (the same inference cost, groups in the weight's order), or write the GPTQ "
                "format, which stores g_idx.")
    if inputs.enabled and inputs.granularity is Granularity.CHANNEL:
        return ("compressed-tensors has no static per-input-channel activation scale that vLLM serves; use per-tensor "
                "activation ranges to export.")
    if inputs.enabled and (weights.format is NumberFormat.NVFP4) != (inputs.format is NumberFormat.NVFP4):
        return ("NVFP4 weights are served with NVFP4 inputs or 16-bit ones (NVFP4A16): a checkpoint cannot mix NVFP4 "
                f"with {inputs.format.value if weights.format is NumberFormat.NVFP4 else weights.format.value}.")
    return None


def dtype_refusal(spec: QuantSpec, dtype: torch.dtype) -> str | None:
    """Why ``spec`` cannot be written in ``dtype`` (None: it can). compressed-tensors 0.20 unpacks FP4
    weights to bfloat16 whatever the model's dtype (unpack_fp4_from_uint8), so a float16 or float32
    model multiplies its inputs by bfloat16 weights and stops on the first layer."""
    if spec.weights.format.block and dtype != torch.bfloat16:  # NVFP4, MXFP4
        return (f"{spec.weights.format.value.upper()} weights run in bfloat16 only: compressed-tensors decompresses them to "
                f"bfloat16, so a {str(dtype).removeprefix('torch.')} model cannot run them in transformers. Write "
                "the checkpoint in bfloat16.")
    return None


def vllm_scheme(spec: QuantSpec) -> str | None:
    """The scheme vLLM's compressed-tensors loader picks for ``spec`` (None: no scheme, it refuses the checkpoint)."""
    weights, inputs = spec.weights, spec.activations
    fmt = weights.format
    if fmt is NumberFormat.MXFP4:
        return "CompressedTensorsW4A16Mxfp4"  # whatever the inputs say
    if fmt is NumberFormat.NVFP4:
        return "CompressedTensorsW4A4Fp4" if inputs.enabled else "CompressedTensorsW4A16Fp4"
    if not inputs.enabled:
        if fmt is NumberFormat.FP8:
            return "CompressedTensorsW8A16Fp8"
        return "CompressedTensorsWNA16" if weights.bits in VLLM_WEIGHT_ONLY_BITS else None
    if fmt is NumberFormat.FP8:
        served = inputs.format is NumberFormat.FP8 and (inputs.dynamic or inputs.granularity is Granularity.TENSOR)
        return "CompressedTensorsW8A8Fp8" if served else None
    if inputs.format is NumberFormat.INT and weights.bits == inputs.bits == 8 and weights.symmetric:
        return "CompressedTensorsW8A8Int8"  # static per tensor or dynamic per token
    return None


def vllm_warning(spec: QuantSpec) -> str | None:
    """What vLLM does not serve as simulated (None: it serves exactly this scheme)."""
    weights, inputs = spec.weights, spec.activations
    chosen = vllm_scheme(spec)
    if chosen is None and not inputs.enabled:
        return (f"vLLM serves weight-only compressed-tensors of {' or '.join(map(str, VLLM_WEIGHT_ONLY_BITS))} bits, "
                f"not this {weights.bits}-bit checkpoint.")
    if chosen is None and weights.format is NumberFormat.FP8:
        return "vLLM's FP8 W8A8 kernels take FP8 inputs, static per tensor or dynamic per token."
    if chosen is None:
        return (f"vLLM's int8 W8A8 kernels take 8-bit weights and {VLLM_W8A8_INPUTS} static inputs (or dynamic per "
                f"token), not W{weights.bits}A{inputs.bits}.")
    if weights.format is NumberFormat.MXFP4 and inputs.enabled:
        return ("vLLM serves MXFP4 checkpoints as W4A16 (CompressedTensorsW4A16Mxfp4): the MXFP4 input quantization "
                "simulated here does not happen there.")
    return None


def transformers_warning(spec: QuantSpec) -> str | None:
    """Why transformers (with compressed-tensors 0.20) cannot load ``spec``'s checkpoint (None: it can)."""
    if not spec.weights.symmetric and not spec.activations.enabled:
        return ("transformers with compressed-tensors 0.20 cannot load the packed zero points of asymmetric "
                "pack-quantized checkpoints, llm-compressor's included (llm-compressor issue 1618); vLLM reads them.")
    return None


def serving_warning(spec: QuantSpec, widths: list[int] | None = None) -> str | None:
    """What a loader will refuse in a checkpoint that can still be written (None: all of them load it);
    for mixed precision, of each width it holds (``widths``; by default every width it may choose)."""
    parts = [width_spec(spec, bits) for bits in (widths or spec.mixed.bits)] if spec.mixed is not None else [spec]
    notes = dict.fromkeys(note for part in parts for note in (vllm_warning(part), transformers_warning(part)) if note)
    return " ".join(notes) or None


def weight_args(spec: QuantSpec) -> QuantizationArgs:
    """The weights' QuantizationArgs as llm-compressor's presets write them (FP8, FP8_DYNAMIC,
    NVFP4, MXFP4; W4A16 and W8A8 for integers)."""
    weights = spec.weights
    # observer: llm-compressor's name for a grid from each group's min and max, as calibscope's are found
    if weights.format is NumberFormat.FP8:
        return QuantizationArgs(num_bits=8, type="float", symmetric=True, dynamic=False, observer="memoryless_minmax",
                                strategy="tensor" if weights.group_size == -1 else "channel")
    if weights.format.block:
        return QuantizationArgs(**_block_args(weights.format), dynamic=False, observer="memoryless_minmax")
    static = weights.method is WeightMethod.GPTQ and weights.act_order is ActOrder.STATIC
    return QuantizationArgs(num_bits=weights.bits, type="int", symmetric=weights.symmetric,
                            strategy="group" if weights.group_size else "channel", group_size=weights.group_size or None,
                            actorder="static" if static else None, dynamic=False, observer="memoryless_minmax",
                            zp_dtype=None if weights.symmetric else torch.int8)


def _block_args(fmt: NumberFormat) -> dict:
    """NVFP4 (e4m3 scales per 16 under a global scale) and MXFP4 (e8m0 scales per 32)."""
    nvfp4 = fmt is NumberFormat.NVFP4
    scale_dtype = torch.float8_e4m3fn if nvfp4 else torch.uint8
    return {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group" if nvfp4 else "group",
            "group_size": fmt.block, "scale_dtype": scale_dtype, "zp_dtype": scale_dtype}


def input_args(spec: QuantSpec) -> QuantizationArgs | None:
    inputs = spec.activations
    if not inputs.enabled:
        return None
    if inputs.format.block:  # NVFP4: block scales found at inference under the calibrated global scale
        dynamic = "local" if inputs.format is NumberFormat.NVFP4 else True
        observer = "static_minmax" if inputs.format is NumberFormat.NVFP4 else None
        return QuantizationArgs(**_block_args(inputs.format), dynamic=dynamic, observer=observer)
    kind = "float" if inputs.format is NumberFormat.FP8 else "int"
    if inputs.dynamic:
        return QuantizationArgs(num_bits=inputs.bits, type=kind, symmetric=True, strategy="token", dynamic=True)
    observer = "static_minmax" if inputs.format is NumberFormat.FP8 else None
    return QuantizationArgs(num_bits=inputs.bits, type=kind, symmetric=inputs.symmetric, strategy="tensor", dynamic=False,
                            observer=observer, zp_dtype=None if inputs.symmetric else torch.int8)


def scheme(spec: QuantSpec, targets: list[str] | None = None) -> QuantizationScheme:
    """The config group of the quantized Linear layers (``targets``: their names; every Linear layer
    by default), with the format its compressor writes."""
    reason = refusal(spec)
    if reason:
        raise ExportError(reason)
    described = QuantizationScheme(targets=targets or ["Linear"], weights=weight_args(spec), input_activations=input_args(spec))
    described.format = infer_module_format(torch.nn.Linear, described).value
    return described


def width_spec(spec: QuantSpec, bits: int) -> QuantSpec:
    """One width of a mixed-precision scheme as the uniform scheme it is for the layers that took it."""
    return replace(spec, weights=replace(spec.weights, bits=bits), mixed=None)


def kv_cache_args(spec: QuantSpec) -> QuantizationArgs | None:
    """``kv_cache_scheme`` as llm-compressor writes an FP8 KV cache (what vLLM's CompressedTensorsKVCacheMethod
    accepts: 8-bit float, symmetric, static, per tensor or attn_head); None without one."""
    if spec.kv_cache is None:
        return None
    return QuantizationArgs(num_bits=8, type="float", symmetric=True, dynamic=False, strategy=spec.kv_cache.strategy.value)


def kv_cache_tensors(scales: dict[str, KVScales], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each attention module's ``k_scale`` / ``v_scale`` as compressed-tensors registers them on load
    ([1] or [kv heads, 1, 1], the model's dtype); vLLM reads them as ``self_attn.attn.k_scale``."""
    return {f"{name}.{tensor}": value.to(dtype).contiguous() for name, scale in scales.items()
            for tensor, value in (("k_scale", scale.keys), ("v_scale", scale.values))}


def quantization_config(schemes: list[QuantizationScheme], ignore: list[str],
                        kv_cache: QuantizationArgs | None = None) -> QuantizationConfig:
    """config.json's ``quantization_config`` (written by compressed-tensors' ModelCompressor): one
    config group per scheme (several for mixed precision, each naming its layers, as vLLM matches them),
    and the KV cache's scheme."""
    formats = {described.format for described in schemes}
    return QuantizationConfig(config_groups={f"group_{number}": described for number, described in enumerate(schemes)},
                              format=formats.pop() if len(formats) == 1 else "mixed-precision",
                              quantization_status=QuantizationStatus.COMPRESSED, ignore=ignore, kv_cache_scheme=kv_cache)


def _signed(values: torch.Tensor, bits: int) -> torch.Tensor:
    """calibscope's unsigned zero points (0..2^b - 1) in compressed-tensors' signed convention."""
    return (values.float() - 2 ** (bits - 1)).to(torch.int8)


def compressed_layer(name: str, stored: IntWeight | FloatWeight, inputs, described: QuantizationScheme,
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One layer's tensors as its compressor writes them (``name.weight_packed``, ``name.weight_scale`` ...)."""
    if isinstance(stored, FloatWeight):
        state, kept = _float_state(stored, inputs, dtype)
    else:
        state, kept = _int_state(name, stored, inputs, described, dtype)
    compressor = BaseCompressor.get_value_from_registry(described.format)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compressed = compressor.compress(state, described)
    # scales in the checkpoint's dtype, as the served model's parameters hold them; NVFP4's global
    # scales stay float32, e4m3 block scales e4m3 and MX exponents uint8, as the compressor leaves them
    return {f"{name}.{key}": value.to(dtype) if key in kept else value for key, value in compressed.items()}


def _int_state(name: str, integers: IntWeight, inputs, described: QuantizationScheme, dtype: torch.dtype):
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
    if isinstance(inputs, Grid):
        state["input_scale"] = inputs.scale.reshape(1).float()
        if not described.input_activations.symmetric:
            state["input_zero_point"] = _signed(inputs.zero.reshape(1), described.input_activations.num_bits)
    return state, {"weight_scale", "input_scale"}


def _float_state(weight: FloatWeight, inputs, dtype: torch.dtype):
    """The dense weight (element values times scales, exact in float32) with the scales the
    compressor rounds it on; it gives back the same e4m3 or e2m1 values."""
    grids = weight.grids
    state = {"weight": weight.dequantize()}
    if grids.format is NumberFormat.FP8:
        state["weight_scale"] = grids.scale.reshape(-1, 1) if grids.group_size == 0 else grids.scale.reshape(1)
    elif grids.format is NumberFormat.NVFP4:
        state["weight_scale"], state["weight_global_scale"] = grids.stored, grids.global_scale
    else:
        state["weight_scale"] = grids.scale
    if isinstance(inputs, Fp8Inputs):
        state["input_scale"] = inputs.scale.reshape(1)
    elif isinstance(inputs, Nvfp4Inputs):
        state["input_global_scale"] = inputs.global_scale.reshape(1)
    return state, ({"weight_scale", "input_scale"} if grids.format is NumberFormat.FP8 else set())
