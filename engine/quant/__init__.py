"""Simulated quantization: RTN and GPTQ weights (int, FP8, NVFP4, MXFP4), static and dynamic
activation quantization, perplexity, sensitivity."""
from engine.quant.apply import QuantizedModel, quantized
from engine.quant.evaluate import QuantReport, Sensitivity, evaluate
from engine.quant.floats import NumberFormat
from engine.quant.gptq import gptq
from engine.quant.perplexity import EvaluationSet, evaluation_windows, perplexity
from engine.quant.plan import plan_quantization
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

__all__ = [
    "DEFAULT_ACT_ORDER",
    "PRESETS",
    "ActOrder",
    "ActivationSpec",
    "AwqScaling",
    "AwqSpec",
    "EvaluationSet",
    "ExpertPolicy",
    "Granularity",
    "NumberFormat",
    "QuantReport",
    "QuantSpec",
    "QuantizedModel",
    "RangeMethod",
    "Sensitivity",
    "WeightMethod",
    "WeightSpec",
    "evaluate",
    "evaluation_windows",
    "gptq",
    "perplexity",
    "plan_quantization",
    "quantized",
    "rtn",
]
