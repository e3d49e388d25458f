"""Simulated quantization: RTN and GPTQ weights, static activation ranges, perplexity, sensitivity."""
from engine.quant.apply import QuantizedModel, quantized
from engine.quant.evaluate import QuantReport, Sensitivity, evaluate
from engine.quant.gptq import gptq
from engine.quant.perplexity import EvaluationSet, evaluation_windows, perplexity
from engine.quant.plan import plan_quantization
from engine.quant.rtn import rtn
from engine.quant.specs import (
    DEFAULT_ACT_ORDER,
    PRESETS,
    ActivationSpec,
    ActOrder,
    Granularity,
    QuantSpec,
    RangeMethod,
    WeightMethod,
    WeightSpec,
)

__all__ = ["DEFAULT_ACT_ORDER", "PRESETS", "ActOrder", "ActivationSpec", "EvaluationSet", "Granularity", "QuantReport", "QuantSpec",
           "QuantizedModel", "RangeMethod", "Sensitivity", "WeightMethod", "WeightSpec", "evaluate",
           "evaluation_windows", "gptq", "perplexity", "plan_quantization", "quantized", "rtn"]
