"""The one place that knows how a causal LM is put together for a calibration pass: its decoder
blocks, its quantizable layers, how to observe what flows through them, and how to stop a forward
early. Statistics, Hessians, embeddings for cluster selection and the runners all use it.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from engine.errors import CalibscopeError
from engine.models import ExpertsLayer, LayerKind, LinearLayer, find_linear_layers

Observer = Callable[..., None]  # (tensor) for inputs and outputs; (hidden_states, top_k_index, top_k_weights) for ROUTED


class Side(str, Enum):
    """Which tensor of a layer is observed."""

    INPUT = "input"
    OUTPUT = "output"
    ROUTED = "routed"  # an MoE experts module's input and the experts each token is routed to


@dataclass(frozen=True)
class TokenIndex:
    """For each observed token: its calibration row and its position in that row (padding excluded).
    On the host, known without asking the device: each batch entry's calibration row and its number of
    real tokens, in the order the tokens are laid out (empty where the observer made no batch)."""

    rows: torch.Tensor
    positions: torch.Tensor
    batch_rows: tuple[int, ...] = ()
    lengths: tuple[int, ...] = ()


class StopForward(Exception):
    """Raised by an observer once everything asked for is seen: the rest of the forward is skipped."""


def tap_key(layer: str, side: Side) -> str:
    """The name an observed tensor is recorded under: the module name for inputs (what quantizers
    look up), ``name:output`` for outputs."""
    return layer if side is Side.INPUT else f"{layer}:output"


@contextmanager
def observing(points: Sequence[tuple[nn.Module, Side, Observer]]) -> Iterator[None]:
    """Attach ``observer(tensor)`` to each (module, side) point for the block's duration.

    Every handle is removed in ``finally``: an exception inside the forward (including StopForward)
    leaves the model exactly as it was.
    """
    handles = []
    try:
        for module, side, observer in points:
            if Side(side) is Side.ROUTED:
                handles.append(module.register_forward_pre_hook(lambda _m, args, kwargs, fn=observer: fn(*_routed(args, kwargs)),
                                                                with_kwargs=True))
            elif Side(side) is Side.INPUT:
                handles.append(module.register_forward_pre_hook(lambda _m, args, fn=observer: fn(args[0])))
            else:
                handles.append(module.register_forward_hook(lambda _m, _a, out, fn=observer: fn(out)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def routed_point(layer: ExpertsLayer, observer: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]):
    """The (module, side, observer) point that hands ``observer(hidden, routing, weights)`` an MoE
    experts module's tokens, their chosen experts and routing weights: at the experts' call, or where
    the experts are called with inputs already routed (Llama 4) at their caller's input, the choice
    made again by its router (``ExpertsLayer.routed``)."""
    if layer.scaled_inputs:
        return layer.caller, Side.INPUT, lambda hidden: observer(*layer.routed(hidden))
    return layer.module, Side.ROUTED, observer


def _routed(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden_states, top_k_index, top_k_weights) of a call ``experts(hidden_states, top_k_index, top_k_weights)``."""
    hidden = args[0] if args else kwargs["hidden_states"]
    routing = args[1] if len(args) > 1 else kwargs["top_k_index"]
    weights = args[2] if len(args) > 2 else kwargs["top_k_weights"]
    return hidden, routing, weights


def base_model(model: nn.Module) -> nn.Module:
    """The decoder under the LM head: ``model.base_model``, or ``model.model`` where the class's
    ``base_model_prefix`` names another attribute (Llama 4's causal LM says ``language_model``)."""
    base = getattr(model, "base_model", model)
    inner = getattr(model, "model", None)
    return inner if base is model and isinstance(inner, nn.Module) else base


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks: ``layers`` (Llama, Gemma, Mistral, Qwen, ...) or
    ``h`` (GPT-2) of the base model, else the longest ModuleList."""
    base = base_model(model)
    for name in ("layers", "h", "blocks"):
        found = getattr(base, name, None)
        if isinstance(found, nn.ModuleList) and len(found):
            return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise CalibscopeError("This model has no list of transformer blocks calibscope can find.")
    return max(lists, key=len)


def block_prefix(model: nn.Module) -> str:
    """The module-name prefix of the blocks, e.g. ``model.layers`` (block i is ``prefix.i``)."""
    blocks = decoder_blocks(model)
    return next(name for name, module in model.named_modules() if module is blocks)


def select_layers(model: nn.Module, layer_types: Sequence[LayerKind], name_pattern: str,
                  include_head: bool) -> list[LinearLayer]:
    """The layers asked for, in execution order; raises when none matches."""
    pattern = re.compile(name_pattern) if name_pattern else None
    layers = [
        layer for layer in find_linear_layers(model)
        if layer.kind in layer_types and (include_head or not layer.is_head)
        and (pattern is None or pattern.search(layer.name))
    ]
    if not layers:
        raise CalibscopeError("No layer matches this selection; widen the layer types or the name pattern.")
    return layers


def headless_forward(model: nn.Module, inputs: dict[str, torch.Tensor], head: nn.Module | None = None) -> None:
    """A forward without logits (the base model; then the head on its output only when given),
    ending quietly where an observer raised StopForward."""
    try:
        hidden = base_model(model)(**inputs, use_cache=False).last_hidden_state
        if head is not None:
            head(hidden)
    except StopForward:
        pass


@contextmanager
def output_then_stop(module: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """While active, a forward through ``module`` records its output (the hidden states of a
    block) in the yielded dict under "output" and stops there: nothing after it is computed."""
    captured: dict[str, torch.Tensor] = {}

    def grab(_module, _args, output):
        captured["output"] = output[0] if isinstance(output, tuple) else output
        raise StopForward

    handle = module.register_forward_hook(grab)
    try:
        yield captured
    finally:
        handle.remove()


def input_sharing(model: nn.Module, layers: Sequence[LinearLayer], device: torch.device) -> dict[str, str]:
    """Which of ``layers`` read the same input tensor as the layer called just before them (name ->
    the first of the run), seen in a forward of two tokens, by the rule the passes share inputs by
    (the router's): q/k/v and gate/up in Llama, Gemma and Qwen layouts, whatever the modules are
    called. Serving stacks fuse such layers into one (vLLM's qkv_proj, gate_up_proj)."""
    sharing: dict[str, str] = {}
    last: list = [None, None]  # the previous input's layer and tensor (held: its identity stays unique)

    def note(name: str) -> Observer:
        def observe(x: torch.Tensor) -> None:
            if last[1] is x:
                sharing[name] = sharing.get(last[0], last[0])
            last[0], last[1] = name, x
        return observe

    with torch.inference_mode(), observing([(layer.module, Side.INPUT, note(layer.name)) for layer in layers]):
        model(input_ids=torch.ones(1, 2, dtype=torch.long, device=device), use_cache=False)
    return sharing


KVTap = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (keys, values) -> as cached


def _cache_argument(module: nn.Module) -> str | None:
    """The name under which ``module.forward`` takes the KV cache (transformers 5: past_key_values)."""
    parameters = inspect.signature(module.forward).parameters
    return next((name for name in ("past_key_values", "past_key_value") if name in parameters), None)


def cached_attention(model: nn.Module) -> dict[str, nn.Module]:
    """The attention modules whose keys and values a KV cache holds, by name, in model order: as
    compressed-tensors recognises them (a class named *Attention* with key and value projections and a
    cache argument), so that what calibscope calibrates is what its checkpoint's ``kv_cache_scheme``
    quantizes on load."""
    return {name: module for name, module in model.named_modules()
            if "attention" in type(module).__name__.lower()
            and any(hasattr(module, projection) for projection in ("k_proj", "v_proj", "qkv_proj", "kv_b_proj"))
            and _cache_argument(module) is not None}


class _CacheTap:
    """Stands where an attention module expects its KV cache: ``update`` hands the keys and values
    about to be cached (after the key norm and the rotary embedding, before grouped-query heads are
    repeated: [batch, kv heads, tokens, head dim]) to the tap, then caches what it returns in the real
    cache, or returns it where there is none (a forward without cache)."""

    def __init__(self, inner, tap: KVTap) -> None:
        self.inner, self.tap = inner, tap

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs):
        keys, values = self.tap(keys, values)
        return (keys, values) if self.inner is None else self.inner.update(keys, values, *args, **kwargs)

    def __getattr__(self, name: str):
        inner = self.__dict__.get("inner")  # absent while a copy is being made: no endless recursion
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


@contextmanager
def tapping_kv(taps: dict[nn.Module, KVTap]) -> Iterator[None]:
    """While active, each attention module's keys and values pass through its tap on their way into
    the KV cache: where compressed-tensors' ``QuantizedKVCache`` quantizes them, and so where vLLM's
    cache stores them. Every hook is removed in ``finally``."""
    handles = []

    def hook(tap: KVTap, argument: str):
        def substitute(_module, args, kwargs):
            return args, {**kwargs, argument: _CacheTap(kwargs.get(argument), tap)}
        return substitute

    try:
        for module, tap in taps.items():
            argument = _cache_argument(module)
            if argument is None:
                raise CalibscopeError(f"{type(module).__name__} takes no KV cache argument, so its cache cannot be observed "
                                      "or quantized here.")
            handles.append(module.register_forward_pre_hook(hook(tap, argument), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
