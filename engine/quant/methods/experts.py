"""MoE experts quantized: each experts module's fused weights (``gate_up_proj`` [E, 2I, H], gate rows
first; ``down_proj`` [E, H, I]) rounded expert by expert with the scheme's weights; GPTQ on each
expert's own Hessians: its routed inputs' for gate and up (they read one input: one stacked [2I, H]
matrix, as serving stacks fuse them), its intermediate activation's for down. The experts of a
module share their shapes, so their GPTQ runs as one batch (``matrices.quantize_groups``). Routers
stay float, as in the peers.

Which Hessians an expert gets (``ExpertPolicy``, recorded per expert in its rows):
- calibration "router": the tokens the router sent it; an expert with fewer than ``min_tokens`` (0:
  its input width, below which its Hessian is rank-deficient) takes the fallback, "rtn" (rounded to
  nearest: its grids come from its weights) or "all-experts" (the Hessians of every token of the
  block: what it would have seen had the router sent it everything);
- calibration "all-experts": every expert's Hessians over every token.
An expert never gets a zero or NaN Hessian, hence never a scale made from nothing: without tokens it
is rounded to nearest or uses the all-token Hessians.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from engine.errors import CalibscopeError
from engine.models import ExpertsLayer
from engine.quant.formats.floats import FloatWeight
from engine.quant.formats.grid import IntWeight
from engine.quant.measures import output_error
from engine.quant.methods.matrices import GPTQ_BATCH_BYTES, quantize_groups, stored_weight
from engine.quant.specs import ExpertCalibration, ExpertFallback, ExpertPolicy, WeightMethod, WeightSpec
from engine.stats import ExpertReport

PARTS = ("gate_up", "down")  # a part's weights: gate_up_proj / down_proj [E, out, in]


@dataclass(frozen=True)
class ExpertHessians:
    """The Hessians one expert is quantized with (None: rounded to nearest) and where they come from."""

    gate_up: torch.Tensor | None
    down: torch.Tensor | None
    calibration: str  # "router", "all tokens", "all tokens (fallback: N routed tokens)", "rtn (...)"
    tokens: int = 0  # routed to it by the router (0 when unknown)


@dataclass
class ExpertsQuantization:
    """An experts module quantized: the fake weights as [E, out, in] matrices in the module's dtype
    (``ExpertsLayer.stored`` lays them out as the module holds them), each expert part's integers and
    grids (``{module}.{expert}.gate_up`` / ``.down``, what a checkpoint would store), and one row per
    expert and part."""

    gate_up: torch.Tensor
    down: torch.Tensor
    integers: dict[str, IntWeight | FloatWeight]
    rows: list[dict]


def expert_hessians(layer: ExpertsLayer, report: ExpertReport | None, policy: ExpertPolicy,
                    gptq: bool) -> list[ExpertHessians]:
    """Per expert, the Hessians the policy gives it from ``report`` (kept Hessians; None when no
    expert needs any, e.g. RTN)."""
    threshold = policy.min_tokens or layer.hidden
    tokens = _routed_tokens(layer, report)
    chosen = []
    for expert in range(layer.experts):
        routed = tokens[expert]
        if not gptq:
            chosen.append(ExpertHessians(None, None, "rtn", routed))
        elif policy.calibration is ExpertCalibration.ALL:
            chosen.append(_all_tokens(layer, report, expert, "all tokens", routed))
        elif routed >= threshold and (layer.name, expert) in report.kept_hessians:
            chosen.append(ExpertHessians(report.kept_hessians[(layer.name, expert)],
                                         report.kept_intermediate[(layer.name, expert)], "router", routed))
        elif policy.fallback is ExpertFallback.ALL:
            chosen.append(_all_tokens(layer, report, expert, f"all tokens (fallback: {routed} routed < {threshold})", routed))
        else:
            chosen.append(ExpertHessians(None, None, f"rtn (fallback: {routed} routed < {threshold})", routed))
    return chosen


def _routed_tokens(layer: ExpertsLayer, report: ExpertReport | None) -> list[int]:
    if report is None:
        return [0] * layer.experts
    rows = report.routing[report.routing["layer"] == layer.name].set_index("expert")["tokens"]
    return [int(rows.get(expert, 0)) for expert in range(layer.experts)]


def _all_tokens(layer: ExpertsLayer, report: ExpertReport | None, expert: int, calibration: str,
                routed: int) -> ExpertHessians:
    inputs = report.kept_all_inputs.get(layer.name) if report is not None else None
    down = report.kept_all_intermediate.get((layer.name, expert)) if report is not None else None
    if inputs is None or down is None:
        raise CalibscopeError(f"{layer.name}: the all-experts calibration needs every expert's Hessians over every token; "
                              "collect the expert statistics with all_tokens on (or use the router's tokens with the RTN "
                              "fallback).")
    return ExpertHessians(inputs, down, calibration, routed)


def quantize_experts(layer: ExpertsLayer, weights: tuple[torch.Tensor, torch.Tensor], spec: WeightSpec,
                     hessians: list[ExpertHessians]) -> ExpertsQuantization:
    """``weights``: the module's (gate_up, down) as [E, out, in] matrices (``ExpertsLayer.matrices``); ``hessians``: per expert
    (see ``expert_hessians``). GPTQ experts run as batches of one shape, the others to nearest."""
    block = spec.format.block
    if block and (layer.hidden % block or layer.intermediate % block):
        raise CalibscopeError(f"{layer.name}: its widths ({layer.hidden}, {layer.intermediate}) do not split into "
                              f"{spec.format.value}'s blocks of {block}; leave the experts out (name pattern) or use "
                              "another format.")
    rtn = replace(spec, method=WeightMethod.RTN)
    fakes, integers, rows = {}, {}, []
    for part, stack in zip(PARTS, weights):
        done: dict[int, tuple] = {}
        solved = [e for e in range(layer.experts) if getattr(hessians[e], part) is not None and spec.needs_hessians]
        for chunk in _chunks(solved, stack.shape[1], stack.shape[2]):
            names = [f"{layer.name}.{expert}.{part}" for expert in chunk]
            results = quantize_groups([[stack[e]] for e in chunk], spec, [getattr(hessians[e], part) for e in chunk], names)
            done.update({expert: result[0] for expert, result in zip(chunk, results)})
        rounded = [e for e in range(layer.experts) if e not in done]
        if rounded:
            done.update({e: result[0] for e, result in zip(rounded, quantize_groups([[stack[e]] for e in rounded], rtn,
                                                                                    [None] * len(rounded)))})
        fakes[part] = torch.empty_like(stack)  # filled expert by expert, each result freed as it lands
        for expert in range(layer.experts):
            fake, grids, costs = done.pop(expert)
            stored = stored_weight(fake, grids).stored_in(stack.dtype)
            integers[f"{layer.name}.{expert}.{part}"] = stored
            fake = stored.dequantize() if stored.grids is not grids else fake
            fakes[part][expert] = fake
            rows.append(_row(layer, expert, part, stack[expert], fake, hessians[expert], costs))
    return ExpertsQuantization(fakes["gate_up"], fakes["down"], integers, rows)


def _chunks(experts: list[int], rows: int, columns: int) -> list[list[int]]:
    """The experts to solve, in batches of at most GPTQ_BATCH_BYTES of weights and Hessians (float32)."""
    size = max(1, GPTQ_BATCH_BYTES // ((rows + columns) * columns * 4))
    return [experts[start:start + size] for start in range(0, len(experts), size)]


def _row(layer: ExpertsLayer, expert: int, part: str, original: torch.Tensor, fake: torch.Tensor,
         hessians: ExpertHessians, costs: dict) -> dict:
    original = original.float()
    delta = fake.float() - original
    hessian = getattr(hessians, part)
    row = {"layer": f"{layer.name}.{expert}.{part}", "kind": "expert", "in_features": original.shape[1],
           "expert": expert, "tokens": hessians.tokens, "calibration": hessians.calibration, **costs,
           "weight_error": float(delta.pow(2).sum() / original.pow(2).sum().clamp(min=1e-30))}
    if hessian is not None:
        row["output_error"] = output_error(delta, original, hessian)
    return row
