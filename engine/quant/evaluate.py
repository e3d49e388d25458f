"""evaluate: quantize (simulated) with a calibration set's statistics and Hessians, measure the
perplexity against float on held-out text, and how much each layer contributes."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import pandas as pd

from engine.errors import CalibscopeError
from engine.models import LoadedModel, block_of
from engine.progress import Progress, labelled, no_progress, scaled
from engine.quant.apply import QuantizedModel, quantized
from engine.quant.block_gptq import gptq_block_by_block
from engine.quant.perplexity import EvaluationSet, perplexity
from engine.quant.plan import plan_quantization, quantizable_layers
from engine.quant.specs import QuantSpec
from engine.sampling import CalibrationSet
from engine.specs import choice
from engine.stats import HessianReport, StatsReport


class Sensitivity(str, Enum):
    """How each layer's share of the damage is measured. cheap: from the calibration data alone
    (relative output error through the Hessian, GPTQ's loss, the input's expected error); thorough:
    also the perplexity with only that layer quantized (one evaluation per layer); none."""

    NONE = "none"
    CHEAP = "cheap"
    THOROUGH = "thorough"


@dataclass
class QuantReport:
    """Float and quantized perplexity on one evaluation set, and one row per quantized layer."""

    spec: QuantSpec
    float_perplexity: float
    quantized_perplexity: float
    layers: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def gap(self) -> float:
        return self.quantized_perplexity - self.float_perplexity

    def summary_rows(self) -> list[tuple[str, str]]:
        return [
            ("Scheme", self.spec.label()),
            ("Float perplexity", f"{self.float_perplexity:.3f}"),
            ("Quantized perplexity", f"{self.quantized_perplexity:.3f}"),
            ("Gap", f"{self.gap:+.3f} ({100 * self.gap / self.float_perplexity:+.2f}%)"),
            ("Evaluated on", f"{self.meta['evaluation']} ({self.meta['evaluation_tokens']:,} tokens)"),
        ]


def evaluate(loaded: LoadedModel, spec: QuantSpec, evaluation: EvaluationSet, stats: StatsReport | None = None,
             hessians: HessianReport | None = None, sensitivity: Sensitivity = Sensitivity.CHEAP,
             float_perplexity: float | None = None,
             batch_size: int = 4, progress: Progress = no_progress,
             sequential: CalibrationSet | None = None, on_plan: Callable[[QuantizedModel], None] | None = None,
             calibration: CalibrationSet | None = None) -> QuantReport:
    """Quantize the layers ``spec`` selects, compare perplexities, and rank the layers.

    sensitivity: see ``Sensitivity``. ``float_perplexity`` skips the float evaluation when it is
    known for this evaluation set. ``sequential``: GPTQ block by block on this calibration set, each
    block's Hessians from the quantized blocks before it (true sequential where the spec says so),
    instead of every layer at once from ``hessians``. ``on_plan`` receives the quantized weights
    (to write them as a checkpoint) before they are evaluated. ``calibration``: the set AWQ searches
    its scales on (schemes with AWQ)."""
    sensitivity = choice(Sensitivity, sensitivity, "sensitivity")
    started = time.perf_counter()
    layers = quantizable_layers(loaded.model, spec)
    thorough = sensitivity is Sensitivity.THOROUGH
    split = (0.3, 0.45, 0.6) if thorough else (0.5, 0.75, 1.0)
    quantizing = labelled(scaled(progress, 0.0, split[0]), "Quantizing")
    if sequential is not None:
        plan, table = gptq_block_by_block(loaded, sequential, spec, progress=quantizing)
    else:
        plan, table = plan_quantization(loaded, spec, stats, hessians, quantizing, layers=layers, calibration=calibration)
    if on_plan is not None:
        on_plan(plan)
    if float_perplexity is None:
        float_perplexity = perplexity(loaded, evaluation, batch_size,
                                      labelled(scaled(progress, split[0], split[1]), "Float model"))
    with quantized(loaded, plan):
        quantized_perplexity = perplexity(loaded, evaluation, batch_size,
                                          labelled(scaled(progress, split[1], split[2]), "Quantized model"))
    if thorough:
        dense = [name for name in table["layer"] if name in plan.weights or name in plan.inputs]  # experts: not one by one
        changes = dict(zip(dense, layer_perplexity_changes(loaded, plan, dense, evaluation, float_perplexity, batch_size,
                                                           scaled(progress, split[2], 1.0))))
        table["perplexity_change"] = [changes.get(name, float("nan")) for name in table["layer"]]
    table.insert(1, "block", [block_of(name) for name in table["layer"]])
    if sensitivity is Sensitivity.NONE:  # the weights' own error stays: it identifies the weights a checkpoint writes
        table = table[[c for c in ("layer", "block", "kind", "in_features", "weight_error", "seconds") if c in table]]
    calibrated = stats or hessians
    searched = sequential if sequential is not None else calibration if spec.needs_calibration else None
    sha = (searched.manifest.token_sha256 if searched is not None
           else calibrated.meta.get("calibration_sha256", "") if calibrated else "")
    meta = {"model": loaded.info.name, "evaluation": evaluation.name, "evaluation_tokens": evaluation.tokens,
            "evaluation_key": evaluation.key, "layers": len(layers), "sensitivity": sensitivity.value,
            "calibration_sha256": sha, "gptq": gptq_mode(spec, sequential is not None),
            "seconds": round(time.perf_counter() - started, 2)}
    report = QuantReport(spec, float_perplexity, quantized_perplexity, table, meta)
    if not math.isfinite(quantized_perplexity):
        raise CalibscopeError(f"{spec.label()} makes the model's loss non-finite on {evaluation.name}; "
                              "use more bits or wider ranges.")
    return report


ALL_AT_ONCE = "all layers at once"


def gptq_mode(spec: QuantSpec, sequential: bool) -> str:
    """How the GPTQ of a run got its Hessians, in words ("" without GPTQ)."""
    if not spec.needs_hessians:
        return ""
    if not sequential:
        return ALL_AT_ONCE
    return "true sequential" if spec.weights.true_sequential else "sequential"


def layer_perplexity_changes(loaded: LoadedModel, plan, names: list[str], evaluation: EvaluationSet,
                             float_perplexity: float, batch_size: int, progress: Progress = no_progress) -> list[float]:
    """Perplexity with only one layer quantized, minus float, for each layer."""
    changes = []
    for number, name in enumerate(names):
        with quantized(loaded, plan.only({name})):
            changes.append(perplexity(loaded, evaluation, batch_size) - float_perplexity)
        progress((number + 1) / len(names), f"Sensitivity: {name} ({number + 1} of {len(names)})")
    return changes
