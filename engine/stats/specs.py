"""StatsSpec: which layers to observe and what to compute."""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import SpecError

LAYER_TYPES = ("Linear", "Conv1D", "Conv1d", "Conv2d")
CAPTURES = ("inputs", "outputs", "both")


@dataclass(frozen=True)
class StatsSpec:
    """layer_types / name_pattern (a regular expression searched in the module name) select layers;
    the LM head only with include_head (on Gemma it is most of the compute, so passes skip it).
    capture: inputs (what quantizers calibrate), outputs, or both. percentiles are in percent.
    Channels whose |max| exceeds outlier_threshold are outliers (6.0 as in LLM.int8())."""

    layer_types: tuple[str, ...] = LAYER_TYPES
    name_pattern: str = ""
    include_head: bool = False
    capture: str = "inputs"
    percentiles: tuple[float, ...] = (99.9, 99.99, 99.999)
    channel_histograms: bool = True
    outlier_threshold: float = 6.0
    top_outliers: int = 20
    batch_size: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))
        unknown = set(self.layer_types) - set(LAYER_TYPES)
        if unknown or not self.layer_types:
            raise SpecError(f"layer_types {sorted(unknown) or '()'} not supported; choose from {', '.join(LAYER_TYPES)}.")
        try:
            re.compile(self.name_pattern)
        except re.error as error:
            raise SpecError(f"name_pattern {self.name_pattern!r} is not a valid regular expression ({error}).") from None
        if self.capture not in CAPTURES:
            raise SpecError(f"capture={self.capture!r} is not supported; use one of {', '.join(CAPTURES)}.")
        if not self.percentiles or not all(0 < p <= 100 for p in self.percentiles):
            raise SpecError(f"percentiles {self.percentiles} must be in (0, 100], e.g. 99.9, 99.99.")
        if self.outlier_threshold <= 0:
            raise SpecError(f"outlier_threshold={self.outlier_threshold} must be positive.")
        if self.batch_size < 1 or self.top_outliers < 1:
            raise SpecError("batch_size and top_outliers must be at least 1.")

    @property
    def sides(self) -> tuple[str, ...]:
        return {"inputs": ("input",), "outputs": ("output",), "both": ("input", "output")}[self.capture]


@dataclass(frozen=True)
class HessianSpec:
    """Which layers get a GPTQ Hessian, in what precision and where it is kept.

    storage: "model" keeps Hessians on the model's device; "cpu" keeps them in host memory (for a
    model on a GPU whose memory is short). share_inputs: layers reading the same input tensor share
    one Hessian (turn off only to measure what sharing saves)."""

    layer_types: tuple[str, ...] = LAYER_TYPES
    name_pattern: str = ""
    include_head: bool = False
    dtype: str = "float32"
    storage: str = "model"
    share_inputs: bool = True
    batch_size: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        StatsSpec(layer_types=self.layer_types, name_pattern=self.name_pattern, batch_size=self.batch_size)  # same checks
        if self.dtype not in ("float32", "float64"):
            raise SpecError(f"dtype={self.dtype!r} is not supported; use 'float32' or 'float64'.")
        if self.storage not in ("model", "cpu"):
            raise SpecError(f"storage={self.storage!r} is not supported; use 'model' or 'cpu'.")
