"""collect: one pass of the calibration set through the model, statistics streamed through hooks."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import torch

from engine.errors import CalibscopeError
from engine.models import LinearLayer, LoadedModel, find_linear_layers
from engine.progress import Progress, no_progress
from engine.sampling import CalibrationSet
from engine.stats.accumulators import ActivationAccumulator, TokenIndex
from engine.stats.hooks import StopForward, observing
from engine.stats.report import StatsReport, build_report
from engine.stats.specs import StatsSpec

CONVOLUTIONS = ("Conv1d", "Conv2d")


def select_layers(model: torch.nn.Module, spec: StatsSpec) -> list[LinearLayer]:
    """The layers ``spec`` asks for, in execution order."""
    pattern = re.compile(spec.name_pattern) if spec.name_pattern else None
    return [
        layer for layer in find_linear_layers(model)
        if layer.kind in spec.layer_types and (spec.include_head or not layer.is_head)
        and (pattern is None or pattern.search(layer.name))
    ]


def tap_key(layer: str, side: str) -> str:
    return layer if side == "input" else f"{layer}:output"


@dataclass
class BatchTokens:
    """Which positions of the current padded batch are real tokens, and whose."""

    keep: torch.Tensor | None  # flat boolean mask over batch x time; None when nothing is padding
    index: TokenIndex
    rows: torch.Tensor  # the calibration row of each batch entry


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
class _Collector:
    """Routes each observed tensor to its accumulator; layers reading the very same input tensor
    (q/k/v, gate/up) share the first one's accumulator, found at run time by object identity."""

    spec: StatsSpec
    stop_after: str
    accumulators: dict[str, ActivationAccumulator] = field(default_factory=dict)
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
                flat = flat[self.tokens.keep.to(flat.device)]
            index = self.tokens.index
        if key not in self.accumulators:
            self.accumulators[key] = ActivationAccumulator(flat.shape[1], self.spec.channel_histograms, flat.device)
        self.accumulators[key].update(flat, index)


def _run(model: torch.nn.Module, batch: dict[str, torch.Tensor], head: torch.nn.Module | None) -> None:
    """A forward without logits: the base model, then the head on its output only when observed."""
    try:
        hidden = model.base_model(**batch, use_cache=False).last_hidden_state
        if head is not None:
            head(hidden)
    except StopForward:
        pass


def collect(loaded: LoadedModel, calibration: CalibrationSet, spec: StatsSpec = StatsSpec(),
            progress: Progress = no_progress) -> StatsReport:
    """Stream ``calibration`` through ``loaded.model`` once and return the statistics of every selected layer."""
    started = time.perf_counter()
    layers = select_layers(loaded.model, spec)
    if not layers:
        raise CalibscopeError("No layer matches this selection; widen the layer types or the name pattern.")
    points = [(layer, side) for layer in layers for side in spec.sides]
    head = next((layer.module for layer in layers if layer.is_head), None)
    collector = _Collector(spec, stop_after=tap_key(points[-1][0].name, points[-1][1]) if head is None else "")
    batches = calibration.batch_indices(spec.batch_size, by_length=True)  # less padding, same statistics
    device = next(loaded.model.parameters()).device
    with observing([(layer.module, side, collector.observer(layer, side)) for layer, side in points]):
        with torch.inference_mode():
            for number, rows in enumerate(batches):
                ids, mask = calibration.pad(rows)
                collector.tokens = batch_tokens(rows, mask)
                _run(loaded.model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, head)
                collector.first_batch = False
                collector.last_input = None
                progress((number + 1) / len(batches), f"Batch {number + 1} of {len(batches)}")
    return build_report(collector.accumulators, collector.shared, layers, spec, calibration, loaded,
                        seconds=time.perf_counter() - started)
