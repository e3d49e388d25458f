"""Discovery of the quantizable layers of a model, in the order a forward pass runs them."""
from __future__ import annotations

import re
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


def _execution_order(model: nn.Module, candidates: dict[str, nn.Module]) -> list[str]:
    """Names of ``candidates`` in the order a 2-token forward calls them."""
    seen: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda _m, _a, name=name: seen.append(name))
        for name, module in candidates.items()
    ]
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2]], device=device))
    except Exception:  # an architecture this probe cannot drive: fall back to registration order
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
