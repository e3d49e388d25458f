"""Mixed precision: which weight width each layer group gets within a budget of bits per weight.

A group is the layers that read one input (q/k/v, gate/up): vLLM fuses them into one layer and
needs one scheme for it. A group's cost is what its weights take stored (the integers, their
group scales and zero points); its predicted loss comes from calibscope's measurements of the
calibration set (``Allocation``). The measured allocations solve the choice exactly: a
multiple-choice knapsack over the groups by dynamic programming on integer costs. The usual rules
(``Allocation.EDGES``, ``Allocation.LLAMA_CPP``) give more bits to the groups they favour, in their
order, as far as the budget allows. ``group_divergences`` measures what the divergence allocation
weights each group by."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import CalibscopeError
from engine.models import LinearLayer, LoadedModel, block_of
from engine.progress import Progress, no_progress
from engine.quant.apply import QuantizedModel, module_weight, quantized
from engine.quant.divergence import divergence, float_reference
from engine.quant.perplexity import EvaluationSet
from engine.quant.specs import Allocation, MixedSpec, WeightSpec
from engine.sampling import CalibrationSet

SCALE_BITS = 16  # compressed-tensors stores a group's scale in the model's half dtype
MAX_UNITS = 1 << 18  # the knapsack's capacity in cost units (its table: groups x units bytes); beyond it costs are rounded up


@dataclass(frozen=True)
class LayerGroup:
    """Layers that read one input and get one width; ``block``: their decoder block."""

    names: tuple[str, ...]
    block: int
    shapes: tuple[tuple[int, int], ...]  # each layer's (out, in)

    @property
    def weights(self) -> int:
        return sum(rows * columns for rows, columns in self.shapes)

    def stored_bits(self, spec: WeightSpec, bits: int) -> int:
        """Bits its weights take at ``bits``: integers, one scale per group of inputs per row and,
        asymmetric, a packed zero point beside each scale."""
        extra = SCALE_BITS + (0 if spec.symmetric else bits)
        return sum(rows * columns * bits + rows * math.ceil(columns / (spec.group_size or columns)) * extra
                   for rows, columns in self.shapes)

    def label(self) -> str:
        return "/".join(name.rsplit(".", 1)[-1].removesuffix("_proj") for name in self.names)


def layer_groups(layers: Sequence[LinearLayer], sharing: dict[str, str]) -> list[LayerGroup]:
    """The layers in groups of one input (``sharing``: name -> the first layer reading its input), in order."""
    groups: dict[str, list[LinearLayer]] = {}
    for layer in layers:
        groups.setdefault(sharing.get(layer.name, layer.name), []).append(layer)
    return [LayerGroup(tuple(layer.name for layer in members), block_of(members[0].name),
                       tuple((layer.out_features, layer.in_features) for layer in members)) for members in groups.values()]


def costs(groups: Sequence[LayerGroup], spec: WeightSpec, widths: Sequence[int]) -> np.ndarray:
    """[groups, widths] stored bits, as Python integers (exact)."""
    return np.array([[group.stored_bits(spec, bits) for bits in widths] for group in groups], dtype=object)


def budget_bits(groups: Sequence[LayerGroup], budget: float) -> int:
    """The budget in stored bits: ``budget`` bits per weight over every group's weights."""
    return math.floor(budget * sum(group.weights for group in groups))


def knapsack(cost: np.ndarray, loss: np.ndarray, capacity: int) -> np.ndarray:
    """The choice per row of ``cost``/``loss`` [items, options] that minimises the summed loss with
    the summed cost at most ``capacity`` (integer costs; exact). Dynamic programming over the
    capacity: best[c] is the least loss of the items so far at a total cost of exactly c."""
    cost = np.asarray(cost, dtype=np.int64)
    items, options = cost.shape
    best = np.full(capacity + 1, np.inf)
    best[0] = 0.0
    picks = np.zeros((items, capacity + 1), dtype=np.int8)
    for item in range(items):
        following = np.full(capacity + 1, np.inf)
        for option in range(options):
            spend = int(cost[item, option])
            if spend > capacity:
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[spend:] = best[:capacity + 1 - spend] + loss[item, option]
            better = candidate < following
            following[better], picks[item, better] = candidate[better], option
        best = following
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):
        raise CalibscopeError("No choice of widths fits the budget; raise it or add a narrower width.")
    chosen = np.zeros(items, dtype=np.int64)
    for item in range(items - 1, -1, -1):  # walk back the choices that reached the best total
        chosen[item] = picks[item, end]
        end -= int(cost[item, chosen[item]])
    return chosen


def units(cost: np.ndarray, capacity: int) -> tuple[np.ndarray, int]:
    """Integer costs and capacity divided by their common divisor, so the knapsack is exact and
    small; above MAX_UNITS, costs are rounded up to a coarser unit (an allocation that fits still fits)."""
    divisor = math.gcd(*[int(value) for value in cost.ravel()])
    if capacity // divisor > MAX_UNITS:
        divisor = math.ceil(capacity / MAX_UNITS)
    scaled = np.array([[-(-int(value) // divisor) for value in row] for row in cost], dtype=np.int64)
    return scaled, capacity // divisor


def measured_losses(errors: np.ndarray, spec: MixedSpec, divergences: np.ndarray | None = None) -> np.ndarray:
    """Predicted loss [groups, widths]. ``errors``: each group's summed relative output error at each
    width; ``divergences``: each group's KL divergence from float alone at the narrowest width, which
    turns its errors into a predicted divergence (KL grows with the output change's energy, so in
    proportion to the relative error: a second-order model around the float weights)."""
    if spec.allocation is Allocation.OUTPUT_ERROR:
        return errors
    narrowest = np.maximum(errors[:, :1], 1e-30)
    return divergences[:, None] * errors / narrowest


def more_bits_blocks(blocks: int) -> list[int]:
    """llama.cpp's use_more_bits(i, n): the first and last eighth of the blocks, and every third between."""
    return [i for i in range(blocks) if i < blocks // 8 or i >= 7 * blocks // 8 or (i - blocks // 8) % 3 == 2]


def rule_order(groups: Sequence[LayerGroup], allocation: Allocation) -> list[int]:
    """The groups a rule gives more bits, most favoured first."""
    blocks = max(group.block for group in groups) + 1
    if allocation is Allocation.EDGES:
        return sorted(range(len(groups)), key=lambda g: (min(groups[g].block, blocks - 1 - groups[g].block), groups[g].block))
    favoured = set(more_bits_blocks(blocks))
    values_or_down = [g for g, group in enumerate(groups)
                      if any(name.endswith(("v_proj", "down_proj", "c_proj")) for name in group.names)]
    return [g for g in values_or_down if groups[g].block in favoured] + [g for g in values_or_down
                                                                          if groups[g].block not in favoured]


def rule_choice(cost: np.ndarray, order: list[int], capacity: int) -> np.ndarray:
    """Every group at the widest width that fits all of them, then the favoured groups, in order,
    at the widest width each can still afford."""
    options = cost.shape[1]
    base = next((option for option in range(options - 1, -1, -1) if sum(int(c) for c in cost[:, option]) <= capacity), None)
    if base is None:
        raise CalibscopeError("Even the narrowest width for every layer exceeds the budget; raise it.")
    chosen = np.full(cost.shape[0], base, dtype=np.int64)
    spent = sum(int(c) for c in cost[:, base])
    for group in order:
        for option in range(options - 1, base, -1):
            extra = int(cost[group, option]) - int(cost[group, base])
            if spent + extra <= capacity:
                chosen[group], spent = option, spent + extra
                break
    return chosen


def allocate(groups: Sequence[LayerGroup], weights: WeightSpec, spec: MixedSpec, losses: np.ndarray | None) -> np.ndarray:
    """Each group's index into ``spec.bits``: by the knapsack on ``losses`` for a measured allocation,
    else by the rule."""
    cost = costs(groups, weights, spec.bits)
    capacity = budget_bits(groups, spec.budget)
    narrowest = sum(int(c) for c in cost[:, 0])
    if narrowest > capacity:
        per_weight = narrowest / sum(group.weights for group in groups)
        raise CalibscopeError(f"A budget of {spec.budget:g} bits per weight is below the narrowest width's own cost "
                              f"({per_weight:.3f} bits per weight with its scales): raise the budget to at least that.")
    if not spec.allocation.measured:
        return rule_choice(cost, rule_order(groups, spec.allocation), capacity)
    scaled, scaled_capacity = units(cost, capacity)
    return knapsack(scaled, losses, scaled_capacity)


def bits_per_weight(weights: WeightSpec, bits: int, shape: tuple[int, int]) -> float:
    """Stored bits per weight of one [out, in] layer at ``bits``, scales and zero points included."""
    return LayerGroup(("",), 0, (shape,)).stored_bits(weights, bits) / (shape[0] * shape[1])


ALLOCATION_WINDOWS, ALLOCATION_LENGTH = 4, 256  # the calibration text the divergence allocation measures each group on
ALLOCATION_TOKENS = ALLOCATION_WINDOWS * ALLOCATION_LENGTH


def calibration_windows(calibration: CalibrationSet | None, count: int = ALLOCATION_WINDOWS,
                        length: int = ALLOCATION_LENGTH) -> EvaluationSet:
    """The first ``length`` tokens (at most) of the ``count`` longest calibration sequences, cut to one length."""
    if calibration is None or len(calibration) == 0:
        raise CalibscopeError("The divergence allocation measures each layer group on the calibration set: build a set first.")
    longest = sorted(calibration.sequences, key=len, reverse=True)[:count]
    span = min(length, len(longest[-1]))
    if span < 2:
        raise CalibscopeError("The calibration sequences are too short to measure a divergence on; build longer ones.")
    rows = torch.tensor(np.stack([sequence[:span] for sequence in longest]).astype(np.int64))
    return EvaluationSet(rows, "the calibration set's longest sequences")


def group_divergences(loaded: LoadedModel, layers: dict[str, LinearLayer], groups: Sequence[LayerGroup],
                      fakes: dict[str, torch.Tensor], calibration: CalibrationSet | None,
                      progress: Progress = no_progress) -> np.ndarray:
    """Each group's mean KL divergence from float on the calibration set's longest sequences, with
    only its layers quantized (``fakes``: their [out, in] quantized weights)."""
    windows = calibration_windows(calibration)
    reference = float_reference(loaded, windows)
    found = []
    for number, group in enumerate(groups):
        alone = QuantizedModel({name: module_weight(layers[name], fakes[name]) for name in group.names})
        with quantized(loaded, alone):
            found.append(divergence(loaded, windows, reference).mean_kld)
        progress((number + 1) / len(groups), f"Divergence of {group.label()} in block {group.block} alone "
                                              f"({number + 1} of {len(groups)})")
    return np.array(found)
