"""evaluate: quantize (simulated, through the one entry) with a calibration set's statistics and Hessians, measure the
perplexity and the divergence from float on held-out text, and how much each layer contributes."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from engine.errors import CalibscopeError
from engine.models import LoadedModel, block_of
from engine.progress import Progress, labelled, no_progress, scaled
from engine.quant.apply import QuantizedModel, quantized
from engine.quant.divergence import Divergence, FloatReference, divergence, float_reference
from engine.quant.entry import quantize
from engine.quant.perplexity import EvaluationSet
from engine.quant.plan import quantizable_layers
from engine.quant.request import Calibrated, Quantization, Sensitivity
from engine.quant.specs import QuantSpec

EVALUATION_BATCH = 4  # windows per forward when perplexities are measured
ReferenceMaker = Callable[[LoadedModel, EvaluationSet, int, Progress], FloatReference]


@dataclass
class QuantReport:
    """Float and quantized perplexity on one evaluation set, the quantized model's divergence from
    float there (None for a report made before it was measured), and one row per quantized layer."""

    spec: QuantSpec
    float_perplexity: float
    quantized_perplexity: float
    layers: pd.DataFrame
    meta: dict = field(default_factory=dict)
    divergence: Divergence | None = None

    @property
    def gap(self) -> float:
        return self.quantized_perplexity - self.float_perplexity

    def summary_rows(self) -> list[tuple[str, str]]:
        return [
            ("Scheme", self.spec.label()),
            ("Float perplexity", f"{self.float_perplexity:.3f}"),
            ("Quantized perplexity", f"{self.quantized_perplexity:.3f}"),
            ("Gap", f"{self.gap:+.3f} ({100 * self.gap / self.float_perplexity:+.2f}%)"),
            *self.divergence_rows(),
            ("Evaluated on", f"{self.meta['evaluation']} ({self.meta['evaluation_tokens']:,} tokens)"),
            *([("Stored bits per weight", f"{self.meta['average_bits']:.3f} (scales included)")]
              if "average_bits" in self.meta else []),
        ]

    def divergence_columns(self) -> dict[str, float]:
        """Mean, median and p99 KL divergence and top-1 agreement, as table columns (none if unmeasured)."""
        return self.divergence.summary() if self.divergence is not None else {}

    def divergence_rows(self) -> list[tuple[str, str]]:
        found = self.divergence
        if found is None:
            return []
        return [("KL divergence from float", (f"{found.mean_kld:.4f} nats/token (median {found.median_kld:.4f}, "
                                             f"p99 {found.p99_kld:.3f})")),
                ("Same top token as float", f"{100 * found.top1_agreement:.2f}%")]


def evaluate(loaded: LoadedModel, quantization: Quantization | QuantSpec, calibrated: Calibrated, evaluation: EvaluationSet,
             progress: Progress = no_progress, *, make_reference: ReferenceMaker = float_reference,
             on_plan: Callable[[QuantizedModel], None] | None = None) -> QuantReport:
    """Quantize through the one entry (``engine.quant.quantize``), compare perplexities and measure
    the divergence from float on ``evaluation``, and rank the layers as ``quantization.sensitivity`` says.

    ``make_reference`` gives the float model on this evaluation set (a cache's reuses it).
    ``on_plan`` receives the quantized weights (to write them as a checkpoint) before they are
    evaluated."""
    quantization = Quantization.of(quantization)
    spec, sensitivity, batch_size = quantization.spec, quantization.sensitivity, EVALUATION_BATCH
    started = time.perf_counter()
    layers = len(quantizable_layers(loaded.model, spec))
    thorough = sensitivity is Sensitivity.THOROUGH
    split = (0.3, 0.45, 0.6) if thorough else (0.5, 0.75, 1.0)
    plan, table = quantize(loaded, quantization, calibrated, labelled(scaled(progress, 0.0, split[0]), "Quantizing"))
    fused = {key: table.attrs[key] for key in ("fused_rotation",) if key in table.attrs}  # what SpinQuant's R1 / R2 turned
    if on_plan is not None:
        on_plan(plan)
    reference = make_reference(loaded, evaluation, batch_size, labelled(scaled(progress, split[0], split[1]), "Float model"))
    with quantized(loaded, plan):
        measured = divergence(loaded, evaluation, reference, batch_size,
                              labelled(scaled(progress, split[1], split[2]), "Quantized model"))
    if thorough:
        dense = [name for name in table["layer"] if name in plan.weights or name in plan.inputs]  # experts: not one by one
        alone = dict(zip(dense, layer_divergences(loaded, plan, dense, evaluation, reference, batch_size,
                                                  scaled(progress, split[2], 1.0))))
        table["perplexity_change"] = [alone[name].perplexity - reference.perplexity if name in alone else float("nan")
                                      for name in table["layer"]]
        table["kld"] = [alone[name].mean_kld if name in alone else float("nan") for name in table["layer"]]
    table.insert(1, "block", [block_of(name) for name in table["layer"]])
    if sensitivity is Sensitivity.NONE:  # the weights' own error stays: it identifies the weights a checkpoint writes
        kept = ("layer", "block", "kind", "in_features", "bits", "weights", "bits_per_weight", "weight_error", "heads", "clip",
                "seconds")
        table = table[[c for c in kept if c in table]]
    collected = calibrated.stats or calibrated.hessians
    searched = calibrated.samples if quantization.sequential or spec.needs_calibration else None
    sha = (searched.manifest.token_sha256 if searched is not None
           else collected.meta.get("calibration_sha256", "") if collected else "")
    meta = {"model": loaded.info.name, "evaluation": evaluation.name, "evaluation_tokens": evaluation.tokens,
            "evaluation_key": evaluation.key, "layers": layers, "sensitivity": sensitivity.value,
            "calibration_sha256": sha, "gptq": gptq_mode(spec, quantization.sequential),
            "seconds": round(time.perf_counter() - started, 2), **average_bits(table), **fused}
    report = QuantReport(spec, reference.perplexity, measured.perplexity, table, meta, measured)
    if not math.isfinite(measured.perplexity):
        raise CalibscopeError(f"{spec.label()} makes the model's loss non-finite on {evaluation.name}; "
                              "use more bits or wider ranges.")
    return report


def average_bits(table: pd.DataFrame) -> dict[str, float]:
    """A mixed-precision run's stored bits per weight over its layers, scales included (none otherwise)."""
    if "bits_per_weight" not in table:
        return {}
    return {"average_bits": float((table["bits_per_weight"] * table["weights"]).sum() / table["weights"].sum())}


ALL_AT_ONCE = "all layers at once"


def gptq_mode(spec: QuantSpec, sequential: bool) -> str:
    """How the GPTQ of a run got its Hessians, in words ("" without GPTQ)."""
    if not spec.weights.needs_hessians:
        return ""
    if not sequential:
        return ALL_AT_ONCE
    return "true sequential" if spec.weights.true_sequential else "sequential"


def layer_divergences(loaded: LoadedModel, plan, names: list[str], evaluation: EvaluationSet,
                      reference: FloatReference, batch_size: int, progress: Progress = no_progress) -> list[Divergence]:
    """The model with only one layer quantized against float, for each layer."""
    found = []
    for number, name in enumerate(names):
        with quantized(loaded, plan.only({name})):
            found.append(divergence(loaded, evaluation, reference, batch_size))
        progress((number + 1) / len(names), f"Sensitivity: {name} ({number + 1} of {len(names)})")
    return found
