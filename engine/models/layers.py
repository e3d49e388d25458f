"""Discovery of the quantizable layers of a model, in the order a forward pass runs them."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class LinearLayer:
    """One quantizable layer: its module path, type, shape, and whether it is the LM head."""

    name: str
    kind: str
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


def find_linear_layers(model: nn.Module, order: str = "execution") -> list[LinearLayer]:
    """The quantizable layers (nn.Linear, transformers Conv1D, Conv1d/2d), LM head flagged.

    order="execution" runs a 2-token forward to list layers in the order they are called (module
    registration order does not always match it); order="registration" skips that forward.
    """
    candidates = {
        name: module for name, module in model.named_modules() if isinstance(module, QUANTIZABLE_TYPES)
    }
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = _execution_order(model, candidates) if order == "execution" else list(candidates)
    layers = []
    for name in names:
        module = candidates[name]
        in_features, out_features = _features(module)
        layers.append(
            LinearLayer(
                name=name,
                kind=type(module).__name__,
                in_features=in_features,
                out_features=out_features,
                is_head=module is head,
                module=module,
            )
        )
    return layers
