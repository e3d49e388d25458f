"""StatsSpec: which layers to observe and what to compute."""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from engine.errors import SpecError
from engine.hooks import Side
from engine.models import LAYER_KINDS, LayerKind
from engine.runner import Execution
from engine.specs import choice


class Capture(str, Enum):
    """Which tensors of each selected layer a statistics pass observes."""

    INPUTS = "inputs"
    OUTPUTS = "outputs"
    BOTH = "both"

    @property
    def sides(self) -> tuple[Side, ...]:
        return {Capture.INPUTS: (Side.INPUT,), Capture.OUTPUTS: (Side.OUTPUT,), Capture.BOTH: (Side.INPUT, Side.OUTPUT)}[self]


class Precision(str, Enum):
    """What a Hessian accumulates in."""

    FLOAT32 = "float32"
    FLOAT64 = "float64"


class Diagnostics(str, Enum):
    """How far each Hessian is diagnosed. full: eigenvalues, numerical rank, conditioning and the
    smallest damping that factorizes; quick: trace, diagonal, dead channels and whether GPTQ's default
    damping factorizes (one float32 Cholesky: for matrices too large to decompose in time); none."""

    FULL = "full"
    QUICK = "quick"
    NONE = "none"


class Storage(str, Enum):
    """Where Hessians are kept while they accumulate: beside the model, or in host memory."""

    MODEL = "model"
    CPU = "cpu"


def layer_kinds(values) -> tuple[LayerKind, ...]:
    """A layer-type selection as LayerKinds; a SpecError naming the allowed types otherwise."""
    kinds = tuple(values)
    unknown = [v for v in kinds if v not in {k.value for k in LayerKind}]
    if unknown or not kinds:
        raise SpecError(f"layer_types {sorted(map(str, unknown)) or '()'} not supported; "
                        f"choose from {', '.join(k.value for k in LayerKind)}.")
    return tuple(LayerKind(v) for v in kinds)


def check_pattern(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as error:
        raise SpecError(f"name_pattern {pattern!r} is not a valid regular expression ({error}).") from None


@dataclass(frozen=True)
class StatsSpec:
    """layer_types / name_pattern (a regular expression searched in the module name) select layers;
    the LM head only with include_head (on Gemma it is most of the compute, so passes skip it).
    capture: inputs (what quantizers calibrate), outputs, or both. percentiles are in percent.
    Channels whose |max| exceeds outlier_threshold are outliers (6.0 as in LLM.int8())."""

    layer_types: tuple[LayerKind, ...] = LAYER_KINDS
    name_pattern: str = ""
    include_head: bool = False
    capture: Capture = Capture.INPUTS
    percentiles: tuple[float, ...] = (99.9, 99.99, 99.999)
    channel_histograms: bool = True
    outlier_threshold: float = 6.0
    top_outliers: int = 20
    batch_size: int = 8
    execution: Execution = Execution.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", layer_kinds(self.layer_types))
        object.__setattr__(self, "execution", choice(Execution, self.execution, "execution"))
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))
        check_pattern(self.name_pattern)
        object.__setattr__(self, "capture", choice(Capture, self.capture, "capture"))
        if not self.percentiles or not all(0 < p <= 100 for p in self.percentiles):
            raise SpecError(f"percentiles {self.percentiles} must be in (0, 100], e.g. 99.9, 99.99.")
        if self.outlier_threshold <= 0:
            raise SpecError(f"outlier_threshold={self.outlier_threshold} must be positive.")
        if self.batch_size < 1 or self.top_outliers < 1:
            raise SpecError("batch_size and top_outliers must be at least 1.")

    @property
    def sides(self) -> tuple[Side, ...]:
        return self.capture.sides


@dataclass(frozen=True)
class HessianSpec:
    """Which layers get a GPTQ Hessian, in what precision and where it is kept.

    storage: "model" keeps Hessians on the model's device; "cpu" keeps them in host memory (for a
    model on a GPU whose memory is short). share_inputs: layers reading the same input tensor share
    one Hessian (turn off only to measure what sharing saves). keep: keep every Hessian (for GPTQ
    and export) or only their diagnostics (a model whose Hessians do not fit in memory together).
    execution: the whole model at once, block by block, or as the memory plan decides."""

    layer_types: tuple[LayerKind, ...] = LAYER_KINDS
    name_pattern: str = ""
    include_head: bool = False
    dtype: Precision = Precision.FLOAT32
    storage: Storage = Storage.MODEL
    share_inputs: bool = True
    batch_size: int = 8
    keep: bool = True
    diagnostics: Diagnostics = Diagnostics.FULL
    execution: Execution = Execution.AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_types", layer_kinds(self.layer_types))
        object.__setattr__(self, "execution", choice(Execution, self.execution, "execution"))
        object.__setattr__(self, "diagnostics", choice(Diagnostics, self.diagnostics, "diagnostics"))
        check_pattern(self.name_pattern)
        if self.batch_size < 1:
            raise SpecError("batch_size must be at least 1.")
        object.__setattr__(self, "dtype", choice(Precision, self.dtype, "dtype"))
        object.__setattr__(self, "storage", choice(Storage, self.storage, "storage"))
