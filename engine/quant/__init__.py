"""Simulated quantization: RTN and GPTQ weights (int, FP8, NVFP4, MXFP4), static and dynamic
activation quantization, SmoothQuant, AWQ, MoE experts, an FP8 KV cache; perplexity, divergence from float, sensitivity.

One entry: ``quantize(loaded, Quantization(spec, ...), Calibrated(...))`` gives the plan and its
per-layer table, ``evaluate`` the same plus perplexities; both check what the scheme needs once."""
from engine.quant.activations.format_ranges import format_ranges
from engine.quant.activations.inputs import Fp8Inputs, Mxfp4Inputs, Nvfp4Inputs, TokenInputs
from engine.quant.activations.kv_cache import KV_METHODS, kv_cache_table, kv_method_ranges
from engine.quant.activations.ranges import entropy_clip
from engine.quant.apply import QuantizedModel, quantized
from engine.quant.divergence import Divergence, FloatReference, divergence, float_reference
from engine.quant.entry import quantize
from engine.quant.evaluate import ALL_AT_ONCE, QuantReport, evaluate
from engine.quant.formats.floats import FloatWeight, NumberFormat
from engine.quant.formats.grid import Grid, IntWeight, rounds_scales
from engine.quant.formats.hadamard import InputRotation, hadamard, has_hadamard, has_random_hadamard, random_hadamard
from engine.quant.formats.kv import KVScales, fake_quantize_fp8_kv
from engine.quant.formats.rtn import rtn
from engine.quant.methods.awq_pass import awq_scaling, search_awq_scaling
from engine.quant.methods.fused_rotation import FusedRotations, fuse_rotations
from engine.quant.methods.gptq import gptq
from engine.quant.methods.mappings import gain_offset
from engine.quant.methods.mixed import ALLOCATION_TOKENS
from engine.quant.methods.rotation import LayerRotations, layer_rotations
from engine.quant.perplexity import EvaluationSet, evaluation_windows, output_logits, perplexity
from engine.quant.plan import quantizable_layers
from engine.quant.request import Calibrated, Quantization, Sensitivity
from engine.quant.specs import (
    DEFAULT_ACT_ORDER,
    PRESETS,
    ActivationSpec,
    ActOrder,
    Allocation,
    AwqScaling,
    AwqSpec,
    CholeskyFailure,
    ExpertCalibration,
    ExpertFallback,
    ExpertPolicy,
    Granularity,
    KVCacheSpec,
    KVRange,
    KVStrategy,
    MixedSpec,
    QuantSpec,
    RangeMethod,
    Rotation,
    RotationMatrix,
    RotationSpec,
    WeightMethod,
    WeightSpec,
)

__all__ = [
    "ALLOCATION_TOKENS",
    "ALL_AT_ONCE",
    "DEFAULT_ACT_ORDER",
    "KV_METHODS",
    "PRESETS",
    "ActOrder",
    "ActivationSpec",
    "Allocation",
    "AwqScaling",
    "AwqSpec",
    "Calibrated",
    "CholeskyFailure",
    "Divergence",
    "EvaluationSet",
    "ExpertCalibration",
    "ExpertFallback",
    "ExpertPolicy",
    "FloatReference",
    "FloatWeight",
    "Fp8Inputs",
    "FusedRotations",
    "Granularity",
    "Grid",
    "InputRotation",
    "IntWeight",
    "KVCacheSpec",
    "KVRange",
    "KVScales",
    "KVStrategy",
    "LayerRotations",
    "MixedSpec",
    "Mxfp4Inputs",
    "NumberFormat",
    "Nvfp4Inputs",
    "QuantReport",
    "QuantSpec",
    "Quantization",
    "QuantizedModel",
    "RangeMethod",
    "Rotation",
    "RotationMatrix",
    "RotationSpec",
    "Sensitivity",
    "TokenInputs",
    "WeightMethod",
    "WeightSpec",
    "awq_scaling",
    "divergence",
    "entropy_clip",
    "evaluate",
    "evaluation_windows",
    "fake_quantize_fp8_kv",
    "float_reference",
    "format_ranges",
    "fuse_rotations",
    "gain_offset",
    "gptq",
    "hadamard",
    "has_hadamard",
    "has_random_hadamard",
    "kv_cache_table",
    "kv_method_ranges",
    "layer_rotations",
    "output_logits",
    "perplexity",
    "quantizable_layers",
    "quantize",
    "quantized",
    "random_hadamard",
    "rounds_scales",
    "rtn",
    "search_awq_scaling",
]
