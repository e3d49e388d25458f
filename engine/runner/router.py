"""Routes what the hooks observe to accumulators: the real tokens of each tensor, and the
calibration row and position of each, whichever runner drives the forward.

Padding never reaches an accumulator: the positions of real tokens are found once per batch on the
host (the attention mask lives there), moved to the device once, and gathered with ``index_select``,
whose output size is known in advance, so no observed layer waits for the device.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engine import scratch
from engine.hooks import Side, StopForward, TokenIndex, routed_point, tap_key
from engine.models import ExpertsLayer, LinearLayer
from engine.runner.request import ExpertsFactory, Factory


@dataclass
class BatchTokens:
    """Which positions of the current padded batch are real tokens, and whose."""

    keep: torch.Tensor | None  # flat indices of real tokens over batch x time; None when nothing is padding
    index: TokenIndex
    rows: torch.Tensor  # the calibration row of each batch entry

    def to(self, device: torch.device) -> BatchTokens:
        """Everything on the model's device once per batch, not once per observed layer."""
        keep = None if self.keep is None else self.keep.to(device, non_blocking=True)
        index = TokenIndex(self.index.rows.to(device, non_blocking=True), self.index.positions.to(device, non_blocking=True),
                           self.index.batch_rows, self.index.lengths)
        return BatchTokens(keep, index, self.rows.to(device, non_blocking=True))


def batch_tokens(rows: list[int], mask: torch.Tensor) -> BatchTokens:
    """From a CPU attention mask [batch, time] and the calibration rows of the batch."""
    width = mask.shape[1]
    position = (mask.cumsum(1) - 1).reshape(-1)  # position among the row's real tokens (left padding too)
    batch_rows = torch.tensor(rows, dtype=torch.int64, device="cpu")
    row = batch_rows.repeat_interleave(width)
    host = (tuple(rows), tuple(mask.sum(1).tolist()))
    if bool(mask.all()):
        return BatchTokens(None, TokenIndex(row, position, *host), batch_rows)
    keep = torch.nonzero(mask.reshape(-1)).flatten()
    return BatchTokens(keep, TokenIndex(row[keep], position[keep], *host), batch_rows)


@dataclass
class Router:
    """Feeds each observed tensor to its accumulator, made on first sight by ``factory``.

    Layers that read the very same input tensor as the layer observed just before (q/k/v, gate/up)
    share its accumulator: found in the first batch by object identity, not by name lists.
    ``stop_after``: the key after which the forward has nothing left to observe; ``learn_stop``: it
    is the key observed last in the first batch (the first batch runs to the end). ``one_group``:
    only the first group of inputs is observed, the forward stopped at the first input that is not
    theirs (true-sequential GPTQ, one group of layers at a time).
    """

    factory: Factory
    stop_after: str = ""
    experts_factory: ExpertsFactory | None = None
    share_inputs: bool = True
    learn_stop: bool = False
    one_group: bool = False
    accumulators: dict[str, object] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)
    tokens: BatchTokens | None = None
    last_input: tuple[str, torch.Tensor] | None = None
    last_key: str = ""
    first_batch: bool = True

    def observer(self, layer: LinearLayer, side: Side):
        key = tap_key(layer.name, side)
        return lambda tensor: self.observe(key, layer, side, tensor)

    def start_batch(self, tokens: BatchTokens) -> None:
        self.tokens = tokens
        self.last_input = None

    def end_batch(self) -> None:
        if self.first_batch and self.learn_stop:
            self.stop_after = self.last_key
        self.first_batch = False
        self.last_input = None

    def observe(self, key: str, layer: LinearLayer, side: Side, tensor: torch.Tensor) -> None:
        if self.one_group and self.last_input is not None and self.last_input[1] is not tensor:
            raise StopForward  # the next group's input: this group is complete
        if side is Side.OUTPUT or not self._is_shared(key, tensor):
            self._update(key, layer, tensor)
        if side is Side.INPUT:
            self.last_input = (key, tensor)  # holding it keeps its identity unique until the next input
        self.last_key = key
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

    def _update(self, key: str, layer: LinearLayer, tensor: torch.Tensor) -> None:
        if layer.kind.channels_first:  # every spatial position is a "token", nothing is padding
            flat = tensor.movedim(1, -1).reshape(-1, tensor.shape[1])
            spatial = flat.shape[0] // tensor.shape[0]
            positions = torch.arange(spatial, device=flat.device).repeat(tensor.shape[0])
            index = TokenIndex(self.tokens.rows.repeat_interleave(spatial), positions, self.tokens.index.batch_rows,
                               (spatial,) * tensor.shape[0])
        else:
            flat = tensor.reshape(-1, tensor.shape[-1])
            if self.tokens.keep is not None:
                kept = scratch.take("real tokens", (self.tokens.keep.shape[0], flat.shape[1]), flat.dtype, flat.device)
                flat = torch.index_select(flat, 0, self.tokens.keep, out=kept)
            index = self.tokens.index
        if key not in self.accumulators:
            self.accumulators[key] = self.factory(flat.shape[1], flat.device)
        self.accumulators[key].update(flat, index)

    def points(self, layers: list[LinearLayer], sides: tuple[Side, ...], experts: Sequence[ExpertsLayer] = ()):
        """The (module, side, observer) points that route ``layers``' tensors (and ``experts``'
        routed inputs) here."""
        return [(layer.module, side, self.observer(layer, side)) for layer in layers for side in sides] + \
            [routed_point(layer, lambda hidden, routing, weights, layer=layer: self.route(layer, hidden, routing, weights))
             for layer in experts]

    def route(self, layer: ExpertsLayer, hidden: torch.Tensor, routing: torch.Tensor, weights: torch.Tensor) -> None:
        """An experts module's real tokens [tokens, hidden], their experts and routing weights
        [tokens, top-k] and whose tokens they are, to its accumulator."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        index, weights = routing.reshape(-1, routing.shape[-1]), weights.reshape(-1, weights.shape[-1])
        if self.tokens.keep is not None:
            flat, index, weights = (t.index_select(0, self.tokens.keep) for t in (flat, index, weights))
        if layer.name not in self.accumulators:
            self.accumulators[layer.name] = self.experts_factory(layer, flat.device)
        self.accumulators[layer.name].update(flat, index, weights, self.tokens.index)
