"""MoE experts in a checkpoint: the fused ``gate_up_proj`` [E, 2I, H] / ``down_proj`` [E, H, I] that
transformers 5 holds, written as the per-expert Linear layers the architecture's own checkpoints
have (what vLLM's fused-MoE loaders and llm-compressor's saved models name them).

The names come from transformers' conversion mapping, the table it fuses those checkpoints with on
load (``mlp.experts.*.gate_proj.weight`` + ``up_proj`` -> ``mlp.experts.gate_up_proj`` for the
Qwen-MoE family, OLMoE and DeepSeek; ``block_sparse_moe.experts.*.w1`` / ``w3`` / ``w2`` for
Mixtral), read backwards; an architecture without one (a model made here) gets the Qwen-MoE names.
Gate rows come first in ``gate_up_proj`` (its converter concatenates gate then up), so expert e's
gate is rows [0, I) and its up rows [I, 2I) of its matrix, and their grids are those rows' grids.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from transformers.conversion_mapping import get_checkpoint_conversion_mapping

from engine.errors import ExportError
from engine.models import ExpertsLayer, find_experts
from engine.quant import IntWeight

REGEX = set("()[]?*^$\\|+{}")  # a renaming written as a pattern is not undone by a plain replace (none touch experts)
QWEN_MOE = ("mlp.experts.*.gate_proj.weight", "mlp.experts.*.up_proj.weight", "mlp.experts.*.down_proj.weight")


def _patterns(model_type: str) -> tuple[tuple[str, str, str], list[tuple[str, str]]]:
    """(gate, up, down) checkpoint patterns with ``*`` for the expert, and the renamings (checkpoint
    text, model text) transformers applies on load."""
    gate = up = down = None
    renamings = []
    for rule in get_checkpoint_conversion_mapping(model_type) or []:
        sources, targets = list(rule.source_patterns), list(rule.target_patterns)
        operations = [type(operation).__name__ for operation in getattr(rule, "operations", [])]
        if not operations and len(sources) == len(targets) == 1 and not set(sources[0] + targets[0]) & REGEX:
            renamings.append((sources[0], targets[0]))
        elif targets[0].endswith("experts.gate_up_proj") and len(sources) == 2:
            gate, up = sources
        elif targets[0].endswith("experts.down_proj") and len(sources) == 1:
            down = sources[0]
    if gate is None or down is None:
        return QWEN_MOE, []
    return (gate, up, down), renamings


def _named(module: str, pattern: str, expert: int, renamings: list[tuple[str, str]]) -> str:
    """The checkpoint's Linear name of one expert's projection: the pattern's tail after ``experts``
    put after the module's name, then the load-time renamings undone."""
    tail = pattern.split("experts", 1)[1].replace("*", str(expert)).removesuffix(".weight")
    name = module + tail
    for checkpoint_text, model_text in renamings:
        name = name.replace(model_text, checkpoint_text)
    return name


def rows(stored: IntWeight, start: int, stop: int) -> IntWeight:
    """The integers and grids of rows [start, stop) of a quantized weight (grids are per row)."""
    grids = stored.grids
    return IntWeight(stored.codes[start:stop], replace(grids, scale=grids.scale[start:stop], zero=grids.zero[start:stop]))


def _expert_names(model_type: str, layer: ExpertsLayer) -> list[tuple[str, str, str]]:
    """Per expert of ``layer``: its gate, up and down projections' checkpoint Linear names."""
    (gate, up, down), renamings = _patterns(model_type)
    return [tuple(_named(layer.name, pattern, expert, renamings) for pattern in (gate, up, down))
            for expert in range(layer.experts)]


def expert_linears(model_type: str, layer: ExpertsLayer, integers: dict[str, object]) -> dict[str, IntWeight]:
    """Checkpoint Linear name -> integers and grids, for every expert of ``layer`` (``integers``: the
    plan's ``expert_integers``, keyed ``{module}.{expert}.{part}``)."""
    if layer.transposed:
        raise ExportError(f"{layer.name}: GPT-OSS-style experts (stored transposed, gate and up interleaved, with biases) "
                          "are quantized in the simulation but not written to checkpoints yet; leave the experts out "
                          "with a name pattern to write the rest.")
    named = {}
    for expert, (gate, up, down) in enumerate(_expert_names(model_type, layer)):
        fused, lowered = integers.get(f"{layer.name}.{expert}.gate_up"), integers.get(f"{layer.name}.{expert}.down")
        if not isinstance(fused, IntWeight) or not isinstance(lowered, IntWeight):
            raise ExportError(f"{layer.name}: expert {expert} has no integer weights to write (MoE experts are written for "
                              "integer schemes, e.g. W4 g128 GPTQ or W8 RTN; float formats are simulated only for now).")
        named[gate] = rows(fused, 0, layer.intermediate)
        named[up] = rows(fused, layer.intermediate, 2 * layer.intermediate)
        named[down] = lowered
    return named


def simulated_layers(model: torch.nn.Module, plan) -> dict[str, torch.Tensor]:
    """Every layer a checkpoint of ``plan`` (a QuantizedModel) holds -> the weight the simulation ran
    with: its dense layers' and each quantized expert's projections under their checkpoint names
    (from the plan's fused ``gate_up`` [E, 2I, H] and ``down`` [E, H, I])."""
    named = dict(plan.weights)
    for layer in find_experts(model):
        if f"{layer.name}.gate_up_proj" not in plan.experts or layer.transposed:
            continue
        gate_up, down = plan.experts[f"{layer.name}.gate_up_proj"], plan.experts[f"{layer.name}.down_proj"]
        for expert, (gate, up, lowered) in enumerate(_expert_names(model.config.model_type, layer)):
            named[gate] = gate_up[expert, :layer.intermediate]
            named[up] = gate_up[expert, layer.intermediate:]
            named[lowered] = down[expert]
    return named
