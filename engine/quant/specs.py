"""QuantSpec: which weights and activations to quantize (simulated), how, and with which ranges."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.errors import SpecError

WEIGHT_METHODS = ("none", "rtn", "gptq")
RANGE_METHODS = ("minmax", "percentile", "mse")
GRANULARITIES = ("tensor", "channel")


@dataclass(frozen=True)
class WeightSpec:
    """Weights: round-to-nearest or GPTQ on a uniform grid of ``bits``.

    group_size: one scale per ``group_size`` input columns of each output row (0 = per output
    channel). GPTQ: ``block_size`` columns are processed at once; ``damping`` is the fraction of the
    mean Hessian diagonal added to it (raised tenfold until a Cholesky succeeds); ``act_order``
    quantizes columns by decreasing Hessian diagonal."""

    method: str = "rtn"
    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    block_size: int = 128
    damping: float = 0.01
    act_order: bool = False

    def __post_init__(self) -> None:
        if self.method not in WEIGHT_METHODS:
            raise SpecError(f"weight method {self.method!r} is not supported; use one of {', '.join(WEIGHT_METHODS)}.")
        if not 2 <= self.bits <= 8:
            raise SpecError(f"weight bits={self.bits} is not supported; use 2 to 8.")
        if self.group_size < 0 or self.block_size < 1:
            raise SpecError("group_size must be 0 (per channel) or positive, block_size at least 1.")
        if not 0 < self.damping <= 1:
            raise SpecError(f"damping={self.damping} must be in (0, 1]; GPTQ's default is 0.01.")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def label(self) -> str:
        if not self.enabled:
            return "float weights"
        group = f"g{self.group_size}" if self.group_size else "per-channel"
        return f"W{self.bits} {group} {self.method.upper()}" + (" act-order" if self.act_order and self.method == "gptq" else "")


@dataclass(frozen=True)
class ActivationSpec:
    """Static (calibrated) quantization of every selected layer's input.

    range_method: minmax (the calibration set's |max|, or min and max when asymmetric), percentile
    (of |x|, from the streamed histograms), mse (the clipping that minimizes the expected squared
    error of clipping plus rounding over the histogram). granularity: one range per tensor or per
    input channel."""

    bits: int = 0
    range_method: str = "minmax"
    percentile: float = 99.99
    granularity: str = "tensor"
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits and not 2 <= self.bits <= 16:
            raise SpecError(f"activation bits={self.bits} is not supported; use 0 (off) or 2 to 16.")
        if self.range_method not in RANGE_METHODS:
            raise SpecError(f"range method {self.range_method!r} is not supported; use one of {', '.join(RANGE_METHODS)}.")
        if self.granularity not in GRANULARITIES:
            raise SpecError(f"granularity {self.granularity!r} is not supported; use 'tensor' or 'channel'.")
        if not 0 < self.percentile <= 100:
            raise SpecError(f"percentile={self.percentile} must be in (0, 100], e.g. 99.99.")
        if not self.symmetric and self.range_method != "minmax":
            raise SpecError("Asymmetric activation ranges need min and max: use range method 'minmax', "
                            "or keep them symmetric for percentile and MSE clipping (histograms are of |x|).")
        if self.granularity == "channel" and self.range_method == "mse":
            raise SpecError("MSE clipping is searched per tensor (over its 2,048-bin histogram); "
                            "use granularity 'tensor', or 'minmax' / 'percentile' per channel.")

    @property
    def enabled(self) -> bool:
        return self.bits > 0

    def label(self) -> str:
        if not self.enabled:
            return "float activations"
        method = f"p{self.percentile:g}" if self.range_method == "percentile" else self.range_method
        return f"A{self.bits} static per-{self.granularity} {method}"


@dataclass(frozen=True)
class QuantSpec:
    """Weights and activations of the layers whose module name matches ``name_pattern`` (all
    quantizable layers but the LM head by default; the head shares its weight with the embedding
    in tied models, which quantizers keep in float)."""

    weights: WeightSpec = field(default_factory=WeightSpec)
    activations: ActivationSpec = field(default_factory=ActivationSpec)
    name_pattern: str = ""

    def __post_init__(self) -> None:
        try:
            re.compile(self.name_pattern)
        except re.error as error:
            raise SpecError(f"name_pattern {self.name_pattern!r} is not a valid regular expression ({error}).") from None
        if not self.weights.enabled and not self.activations.enabled:
            raise SpecError("Nothing to quantize: choose a weight method, activation bits, or both.")

    def label(self) -> str:
        parts = [part.label() for part in (self.weights, self.activations) if part.enabled]
        return " + ".join(parts)


PRESETS: dict[str, QuantSpec] = {
    "W4 g128 GPTQ": QuantSpec(WeightSpec("gptq", 4, 128)),
    "W4 g128 RTN": QuantSpec(WeightSpec("rtn", 4, 128)),
    "W3 g128 GPTQ": QuantSpec(WeightSpec("gptq", 3, 128)),
    "W3 g128 RTN": QuantSpec(WeightSpec("rtn", 3, 128)),
    "W8A8 static (min/max)": QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "minmax")),
    "W8A8 static (p99.99)": QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "percentile", 99.99)),
    "W8A8 static (MSE)": QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "mse")),
    "A8 static only (min/max)": QuantSpec(WeightSpec("none"), ActivationSpec(8, "minmax")),
}
