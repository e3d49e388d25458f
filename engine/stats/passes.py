"""One pass of a calibration set through a model, each observed tensor fed to an accumulator.

Shared by activation statistics and Hessians: selection of layers, head-less forwards, padding
excluded, early stop, and layers reading the very same input tensor (q/k/v, gate/up) sharing one
accumulator, found at run time by object identity rather than by name lists.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.errors import CalibscopeError
from engine.models import LinearLayer, LoadedModel, find_linear_layers
from engine.progress import Progress, no_progress
from engine.sampling import CalibrationSet
from engine.stats.accumulators import TokenIndex
from engine.stats.hooks import StopForward, observing

CONVOLUTIONS = ("Conv1d", "Conv2d")
Factory = Callable[[int, torch.device], object]  # (channels, device) -> accumulator with update(x, tokens)


def select_layers(model: torch.nn.Module, layer_types, name_pattern: str, include_head: bool) -> list[LinearLayer]:
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


def tap_key(layer: str, side: str) -> str:
    return layer if side == "input" else f"{layer}:output"


@dataclass
class BatchTokens:
    """Which positions of the current padded batch are real tokens, and whose."""

    keep: torch.Tensor | None  # flat boolean mask over batch x time; None when nothing is padding
    index: TokenIndex
    rows: torch.Tensor  # the calibration row of each batch entry

    def to(self, device: torch.device) -> BatchTokens:
        """Everything on the model's device once per batch, not once per observed layer."""
        keep = None if self.keep is None else self.keep.to(device)
        return BatchTokens(keep, TokenIndex(self.index.rows.to(device), self.index.positions.to(device)), self.rows.to(device))


def batch_tokens(rows: list[int], mask: torch.Tensor) -> BatchTokens:
    width = mask.shape[1]
    position = (mask.cumsum(1) - 1).reshape(-1)  # position among the row's real tokens (left padding too)
    batch_rows = torch.tensor(rows, dtype=torch.int64)
    row = batch_rows.repeat_interleave(width)
    if bool(mask.all()):
        return BatchTokens(None, TokenIndex(row, position), batch_rows)
    keep = mask.reshape(-1).bool()
    return BatchTokens(keep, TokenIndex(row[keep], position[keep]), batch_rows)


@dataclass
class _Router:
    """Routes each observed tensor to its accumulator."""

    factory: Factory
    stop_after: str
    share_inputs: bool = True
    accumulators: dict[str, object] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)
    tokens: BatchTokens | None = None
    last_input: tuple[str, torch.Tensor] | None = None
    first_batch: bool = True

    def observer(self, layer: LinearLayer, side: str):
        key = tap_key(layer.name, side)
        return lambda tensor: self.observe(key, layer.kind, side, tensor)

    def observe(self, key: str, kind: str, side: str, tensor: torch.Tensor) -> None:
        if side == "input" and not self._is_shared(key, tensor):
            self._update(key, kind, tensor)
            self.last_input = (key, tensor)  # holding it keeps its identity unique until the next input
        elif side == "output":
            self._update(key, kind, tensor)
        if key == self.stop_after:
            raise StopForward

    def _is_shared(self, key: str, tensor: torch.Tensor) -> bool:
        if not self.share_inputs:
            return False
        same = self.last_input is not None and self.last_input[1] is tensor
        if self.first_batch and same:
            self.shared[key] = self.shared.get(self.last_input[0], self.last_input[0])
        if key in self.shared and not same:
            raise RuntimeError(f"{key} shared its input with {self.shared[key]} in the first batch but not later")
        return key in self.shared

    def _update(self, key: str, kind: str, tensor: torch.Tensor) -> None:
        if kind in CONVOLUTIONS:  # channels first: every spatial position is a "token", nothing is padding
            flat = tensor.movedim(1, -1).reshape(-1, tensor.shape[1])
            spatial = flat.shape[0] // tensor.shape[0]
            index = TokenIndex(self.tokens.rows.repeat_interleave(spatial), torch.arange(spatial).repeat(tensor.shape[0]))
        else:
            flat = tensor.reshape(-1, tensor.shape[-1])
            if self.tokens.keep is not None:
                flat = flat[self.tokens.keep]
            index = self.tokens.index
        if key not in self.accumulators:
            self.accumulators[key] = self.factory(flat.shape[1], flat.device)
        self.accumulators[key].update(flat, index)


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], head: torch.nn.Module | None) -> None:
    """A forward without logits: the base model, then the head on its output only when observed."""
    try:
        hidden = model.base_model(**batch, use_cache=False).last_hidden_state
        if head is not None:
            head(hidden)
    except StopForward:
        pass


@dataclass
class PassResult:
    accumulators: dict[str, object]
    shared: dict[str, str]  # layer key -> the key whose accumulator it reuses


def calibration_pass(loaded: LoadedModel, calibration: CalibrationSet, layers: list[LinearLayer], sides: tuple[str, ...],
                     factory: Factory, batch_size: int, share_inputs: bool = True,
                     progress: Progress = no_progress, batches: list[list[int]] | None = None,
                     after_batch: Callable[[int, dict[str, object]], None] | None = None) -> PassResult:
    """Stream ``calibration`` through the model once, feeding each observed tensor's real tokens
    (as [tokens, channels]) to an accumulator made by ``factory``.

    ``batches`` (row indices) replaces the default grouping by length; ``after_batch(samples_done,
    accumulators)`` is called after each batch (snapshots of a sample-count sweep)."""
    points = [(layer, side) for layer in layers for side in sides]
    head = next((layer.module for layer in layers if layer.is_head), None)
    router = _Router(factory, stop_after=tap_key(points[-1][0].name, points[-1][1]) if head is None else "",
                     share_inputs=share_inputs)
    if batches is None:
        batches = calibration.batch_indices(batch_size, by_length=True)  # less padding, same results
    done = 0
    device = next(loaded.model.parameters()).device
    with loaded.lock, observing([(layer.module, side, router.observer(layer, side)) for layer, side in points]):
        with torch.inference_mode():
            for number, rows in enumerate(batches):
                ids, mask = calibration.pad(rows)
                router.tokens = batch_tokens(rows, mask).to(device)
                _forward(loaded.model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, head)
                router.first_batch = False
                router.last_input = None
                done += len(rows)
                if after_batch is not None:
                    after_batch(done, router.accumulators)
                progress((number + 1) / len(batches), f"Batch {number + 1} of {len(batches)}")
    return PassResult(router.accumulators, router.shared)
