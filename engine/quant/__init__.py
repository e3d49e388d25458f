"""Simulated quantization: RTN and GPTQ weights (int, FP8, NVFP4, MXFP4), static and dynamic
activation quantization, SmoothQuant, AWQ, MoE experts; perplexity, sensitivity.

One entry: ``quantize(loaded, Quantization(spec, ...), Calibrated(...))`` gives the plan and its
per-layer table, ``evaluate`` the same plus perplexities; both check what the scheme needs once."""
from engine.quant.apply import QuantizedModel, quantized
from engine.quant.entry import quantize
from engine.quant.evaluate import QuantReport, evaluate
from engine.quant.floats import NumberFormat
from engine.quant.gptq import gptq
from engine.quant.perplexity import EvaluationSet, evaluation_windows, perplexity
from engine.quant.request import Calibrated, Quantization, Sensitivity
from engine.quant.rtn import rtn
from engine.quant.specs import (
    DEFAULT_ACT_ORDER,
    PRESETS,
    ActivationSpec,
    ActOrder,
    AwqScaling,
    AwqSpec,
    ExpertPolicy,
    Granularity,
    QuantSpec,
    RangeMethod,
    WeightMethod,
    WeightSpec,
)

__all__ = ["DEFAULT_ACT_ORDER", "PRESETS", "ActOrder", "ActivationSpec", "AwqScaling", "AwqSpec", "Calibrated",
           "EvaluationSet", "ExpertPolicy", "Granularity", "NumberFormat", "QuantReport", "QuantSpec", "Quantization",
           "QuantizedModel", "RangeMethod", "Sensitivity", "WeightMethod", "WeightSpec", "evaluate", "evaluation_windows",
           "gptq", "perplexity", "quantize", "quantized", "rtn"]
