"""Discovery of the quantizable layers of a model, in the order a forward pass runs them."""
from __future__ import annotations

import inspect
import re
import threading
import weakref
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class LayerKind(str, Enum):
    """The quantizable module types, by class name (the labels the dashboard shows)."""

    LINEAR = "Linear"
    CONV1D_TRANSPOSED = "Conv1D"  # transformers' Conv1D: a Linear with its weight stored (in, out)
    CONV1D = "Conv1d"
    CONV2D = "Conv2d"

    @property
    def channels_first(self) -> bool:
        """Convolutions read [batch, channels, ...]; every spatial position is a token."""
        return self in (LayerKind.CONV1D, LayerKind.CONV2D)

    @property
    def is_linear(self) -> bool:
        """A matrix product over the last dimension (what static activation quantization handles)."""
        return self in (LayerKind.LINEAR, LayerKind.CONV1D_TRANSPOSED)


LAYER_KINDS = tuple(LayerKind)
# By isinstance, so subclasses (a library's own Linear) are found too. Conv1D first: it is no nn.Linear.
KIND_OF_TYPE: dict[type[nn.Module], LayerKind] = {
    Conv1D: LayerKind.CONV1D_TRANSPOSED, nn.Conv1d: LayerKind.CONV1D, nn.Conv2d: LayerKind.CONV2D,
    nn.Linear: LayerKind.LINEAR,
}
QUANTIZABLE_TYPES = tuple(KIND_OF_TYPE)


_BLOCK = re.compile(r"\.(\d+)\.")


def block_of(name: str) -> int:
    """model.layers.3.mlp.up_proj -> 3 (-1 for modules outside the blocks, e.g. the head)."""
    return int(m.group(1)) if (m := _BLOCK.search(name)) else -1


def layer_kind(module: nn.Module) -> LayerKind:
    return next(kind for base, kind in KIND_OF_TYPE.items() if isinstance(module, base))


@dataclass(frozen=True)
class LinearLayer:
    """One quantizable layer: its module path, type, shape, and whether it is the LM head."""

    name: str
    kind: LayerKind
    in_features: int
    out_features: int
    is_head: bool
    module: nn.Module = field(repr=False, compare=False, hash=False)


def _features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):  # weight is (in, out), the transpose of nn.Linear's
        return module.weight.shape[0], module.nf
    return module.in_channels, module.out_channels  # Conv1d / Conv2d


# The probe forward runs once per model, under the model's own lock (the one every pass holds): a
# pass on another thread would otherwise see the probe's tokens in its hooks.
_ORDERS: weakref.WeakKeyDictionary[nn.Module, list[str]] = weakref.WeakKeyDictionary()
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_REGISTRY = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock of ``model``: held by every pass that hooks it or swaps its weights (LoadedModel.lock
    is this lock), and by the layer-order probe."""
    with _REGISTRY:
        return _LOCKS.setdefault(model, threading.RLock())


def _execution_order(model: nn.Module, candidates: dict[str, nn.Module]) -> list[str]:
    """Names of ``candidates`` in the order a 2-token forward calls them (probed once per model)."""
    with model_lock(model):
        known = _ORDERS.get(model)
        if known is None or not set(candidates) <= set(known):
            known = _ORDERS[model] = _probe_order(model, candidates)
    return [name for name in known if name in candidates]


def _probe_order(model: nn.Module, candidates: dict[str, nn.Module]) -> list[str]:
    seen: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda _m, _a, name=name: seen.append(name))
        for name, module in candidates.items()
    ]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2]], device=device))
    except Exception:  # noqa: BLE001 - an architecture this probe cannot drive: fall back to registration order
        return list(candidates)
    finally:
        for handle in handles:
            handle.remove()
    ordered = list(dict.fromkeys(seen))
    return ordered + [name for name in candidates if name not in ordered]


def find_linear_layers(model: nn.Module, execution_order: bool = True) -> list[LinearLayer]:
    """The quantizable layers (nn.Linear, transformers Conv1D, Conv1d/2d), LM head flagged.

    execution_order runs a 2-token forward to list layers in the order they are called (module
    registration order does not always match it); without it, registration order, no forward.
    """
    candidates = {
        name: module for name, module in model.named_modules() if isinstance(module, QUANTIZABLE_TYPES)
    }
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = _execution_order(model, candidates) if execution_order else list(candidates)
    layers = []
    for name in names:
        module = candidates[name]
        in_features, out_features = _features(module)
        layers.append(
            LinearLayer(
                name=name,
                kind=layer_kind(module),
                in_features=in_features,
                out_features=out_features,
                is_head=module is head,
                module=module,
            )
        )
    return layers


@dataclass(frozen=True)
class ExpertsLayer:
    """The experts of one MoE block as transformers 5 stores them: ``gate_up_proj`` [experts,
    2·intermediate, hidden] and ``down_proj`` [experts, hidden, intermediate] (Mixtral, Qwen-MoE,
    OLMoE: gate rows first, act(gate) · up), or ``transposed`` [experts, hidden, 2·intermediate] and
    [experts, intermediate, hidden] (GPT-OSS: gate and up columns interleaved, with biases and its own
    clamped gate, ``_apply_gate``), called as ``experts(hidden_states, top_k_index, top_k_weights)``;
    ``router``: the sibling module that scores the experts (its weight is [experts, hidden]).
    ``caller``: for experts called with their inputs already routed and scaled (Llama 4: the block's
    tokens repeated per expert, times the router's sigmoid score, zero where not chosen) the module
    that calls them, whose input is the block's tokens and whose ``router`` says the choice
    (``routed``); the router's weight then scales each expert's input, not its output."""

    name: str
    experts: int
    hidden: int
    intermediate: int
    module: nn.Module = field(repr=False, compare=False, hash=False)
    router: str = ""
    transposed: bool = False
    caller: nn.Module | None = field(default=None, repr=False, compare=False, hash=False)

    @property
    def scaled_inputs(self) -> bool:
        return self.caller is not None

    def routed(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens [n, hidden], chosen experts [n, k], their scores [n, k]) of the caller's input, as
        its router chooses them (Llama 4: the top-k logits, scored by their sigmoid)."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        router = self.caller.router
        scores, logits = router(flat)
        routing = logits.topk(router.top_k, dim=-1).indices
        return flat, routing, scores.gather(1, routing)

    def intermediate_of(self, expert: int, rows: torch.Tensor) -> torch.Tensor:
        """The expert's intermediate activation for ``rows`` [tokens, hidden], as its eager forward
        computes it: what its down projection reads."""
        module = self.module
        gate_up = self.matrices()[0][expert]
        out = torch.nn.functional.linear(rows, gate_up, _bias(module, "gate_up_proj_bias", expert))
        if hasattr(module, "_apply_gate"):  # GPT-OSS: interleaved columns, clamped, (up + 1) · gate · σ(α gate)
            return module._apply_gate(out)
        gate, up = out.chunk(2, dim=-1)
        return module.act_fn(gate) * up

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate_up [E, 2I, H], down [E, H, I]) as [out, in] matrices per expert (views, no copy)."""
        gate_up, down = self.module.gate_up_proj.detach(), self.module.down_proj.detach()
        return (gate_up.transpose(1, 2), down.transpose(1, 2)) if self.transposed else (gate_up, down)

    def stored(self, matrices: torch.Tensor) -> torch.Tensor:
        """[E, out, in] matrices back in the module's own layout."""
        return matrices.transpose(1, 2).contiguous() if self.transposed else matrices


def _bias(module: nn.Module, name: str, expert: int) -> torch.Tensor | None:
    bias = getattr(module, name, None)
    return bias[expert] if isinstance(bias, torch.Tensor) else None


def _expert_weights(module: nn.Module) -> tuple[int, int, int, bool] | None:
    """(experts, hidden, intermediate, transposed) of a fused experts module, None for anything else."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor)) or gate_up.dim() != 3 or down.dim() != 3:
        return None
    experts, first, second = down.shape
    if tuple(gate_up.shape) == (experts, 2 * second, first):  # [E, 2I, H] and [E, H, I]
        return experts, first, second, False
    if tuple(gate_up.shape) == (experts, second, 2 * first):  # transposed: [E, H, 2I] and [E, I, H]
        return experts, second, first, True
    return None


def find_experts(model: nn.Module) -> list[ExpertsLayer]:
    """Every MoE experts module of the layout ExpertsLayer describes, in module order."""
    modules = dict(model.named_modules())
    found = []
    for name, module in modules.items():
        shape = _expert_weights(module)
        if shape is None:
            continue
        experts, hidden, intermediate, transposed = shape
        parent = name.rpartition(".")[0]
        router = next((f"{parent}.{child}" if parent else child for child, candidate in modules[parent].named_children()
                       if isinstance(getattr(candidate, "weight", None), torch.Tensor)
                       and tuple(candidate.weight.shape) == (experts, hidden)), "")
        caller = modules[parent] if _called_pre_routed(module) and hasattr(modules[parent], "router") else None
        found.append(ExpertsLayer(name, experts, hidden, intermediate, module, router, transposed, caller))
    return found


def _called_pre_routed(module: nn.Module) -> bool:
    """Experts whose forward takes the hidden states alone (Llama 4), not (hidden, top_k_index, top_k_weights)."""
    return len(inspect.signature(module.forward).parameters) == 1


def tied_head(model: nn.Module) -> bool:
    """Whether the LM head's weight is the input embeddings' tensor (read it under the model's lock:
    a plan with fused rotations unties them while it is in the model)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return head is not None and embedding is not None and head.weight is embedding.weight
