"""What a quantization is asked to do (``Quantization``: the scheme, how GPTQ gets its Hessians, what
is measured per layer) and what it runs on (``Calibrated``: the calibration set and what was collected
from it). What each method needs is checked here, once, in one wording, for every caller."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

from engine.errors import CalibscopeError, SpecError
from engine.quant.specs import QuantSpec
from engine.sampling import CalibrationSet
from engine.specs import choice
from engine.stats import HessianSpec, KVReport, StatsReport
from engine.stats.experts import ExpertReport
from engine.stats.hessian_report import HessianReport


class Sensitivity(str, Enum):
    """How each layer's share of the damage is measured. cheap: from the calibration data alone
    (relative output error through the Hessian, GPTQ's loss, the input's expected error); thorough:
    also the perplexity with only that layer quantized (one evaluation per layer); none."""

    NONE = "none"
    CHEAP = "cheap"
    THOROUGH = "thorough"


@dataclass(frozen=True)
class Calibrated:
    """A calibration set and what was collected from it: activation statistics (static ranges,
    SmoothQuant), GPTQ Hessians, MoE experts' report (their Hessians kept), the KV cache's statistics
    (collected from ``samples`` when absent). Each report carries the hash of the set it was collected
    on; ``samples`` is the set itself (AWQ's search, the KV cache's calibration and sequential GPTQ run
    their own pass on it)."""

    samples: CalibrationSet | None = None
    stats: StatsReport | None = None
    hessians: HessianReport | None = None
    experts: ExpertReport | None = None
    kv_cache: KVReport | None = None

    def key(self, quantization: Quantization) -> tuple:
        """What a quantized result depends on besides the model and the scheme: the set and how it
        was measured (the reports a run does not read are left out)."""
        samples = self.samples.manifest.token_sha256 if self.samples is not None else None  # None: refused by check()
        if quantization.sequential:
            return samples, "sequential" if quantization.propagate else "block by block"
        stats = (self.stats.meta.get("calibration_sha256"), self.stats.spec) if self.stats is not None else None
        hessians = ((self.hessians.meta.get("calibration_sha256"), json.dumps(self.hessians.meta.get("spec"), sort_keys=True))
                    if self.hessians is not None else None)
        searched = (samples,) if quantization.spec.needs_calibration else ()
        return stats, hessians, *searched


@dataclass(frozen=True)
class Quantization:
    """One quantization of a model: ``spec`` (the scheme); ``sequential``: GPTQ block by block on the
    calibration set, each block's Hessians from the blocks before it as already quantized with
    ``propagate`` (true sequential where the scheme says so), or from the float model without (the
    all-at-once result, one block's Hessians in memory at a time), collected as ``hessians`` says;
    otherwise every layer at once from the collected Hessians. ``sensitivity``: what is measured per
    layer (none skips the output errors a plan's table would hold)."""

    spec: QuantSpec
    sequential: bool = False
    sensitivity: Sensitivity = Sensitivity.CHEAP
    propagate: bool = True
    hessians: HessianSpec = field(default_factory=HessianSpec)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sensitivity", choice(Sensitivity, self.sensitivity, "sensitivity"))
        if self.sequential and not self.spec.can_run_sequentially:
            raise SpecError(f"sequential is for GPTQ weights only (with float activations, without AWQ, mixed precision, "
                            f"a KV cache or a rotation), not "
                            f"{self.spec.label()}: leave it off for this scheme.")

    @classmethod
    def of(cls, asked: Quantization | QuantSpec) -> Quantization:
        """A bare scheme is its quantization with every default (all at once, cheap sensitivity)."""
        return asked if isinstance(asked, Quantization) else cls(asked)

    @property
    def output_errors(self) -> bool:
        """Whether the plan measures each layer's output error (two GEMMs a layer: skipped when unasked)."""
        return self.sensitivity is not Sensitivity.NONE

    def refusal(self, calibrated: Calibrated, resident: bool = True) -> str | None:
        """Why this quantization cannot run on ``calibrated`` (a model ``resident`` in memory or not),
        in the words every caller shows; None when it can."""
        spec = self.spec
        if (self.sequential or spec.needs_calibration) and calibrated.samples is None:
            what = "Sequential GPTQ" if self.sequential else spec.own_pass
            return f"{what} runs its own pass on the calibration set: build a set first."
        if spec.needs_hessians and calibrated.hessians is None and not self.sequential:
            return (f"{spec.label()} needs Hessians of this set: collect Hessians in the Hessians tab (or [hessians] in a "
                    "run config), tick Sequential (sequential = true) for its own pass, or choose RTN.")
        if spec.needs_stats and calibrated.stats is None:
            what = "SmoothQuant" if spec.smoothing is not None else "Static activation quantization"
            return (f"{what} needs activation statistics: collect them in the Activation ranges tab (or [stats] in a run "
                    "config).")
        if spec.needs_calibration and not resident:
            return f"{spec.own_pass} runs on the model in memory: load it without offloading for this step."
        return None

    def check(self, calibrated: Calibrated, resident: bool = True) -> None:
        reason = self.refusal(calibrated, resident)
        if reason:
            raise CalibscopeError(reason)
