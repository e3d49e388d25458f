"""The memory plan of a pass: what it holds (weights, one block, accumulators, activations between
blocks, one batch's working memory), where each lives and how many bytes, and therefore whether the
whole model runs at once or block by block, and where the activations wait between blocks.

Known before any forward, from the model's parameter shapes, the calibration set's padded batches
and the accumulators' sizes; shown by the dashboard and the CLI before a run starts.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum

import pandas as pd
import torch

from engine.errors import CalibscopeError
from engine.hooks import decoder_blocks
from engine.models import LinearLayer, LoadedModel
from engine.models.layers import block_of
from engine.models.offload import available_bytes
from engine.runner.activations import Location
from engine.sampling import CalibrationSet

HEADROOM = 0.85  # plan to use at most this share of what is free: allocators fragment, kernels need scratch
MB = 2**20


class Execution(str, Enum):
    """How a pass runs the model: chosen from the memory plan (auto), or forced."""

    AUTO = "auto"
    WHOLE = "whole-model"
    BLOCKWISE = "block-by-block"


@dataclass(frozen=True)
class PlanItem:
    what: str
    megabytes: float
    where: str


@dataclass(frozen=True)
class MemoryPlan:
    execution: Execution
    device: str
    activations: Location
    available_mb: float
    items: tuple[PlanItem, ...]
    reason: str

    def table(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(item) for item in self.items]).rename(columns={"megabytes": "MB"}).round(1)

    def summary(self) -> str:
        held = ", ".join(f"{item.what} {item.megabytes:,.0f} MB on {item.where}" for item in self.items)
        return f"{self.execution.value} on {self.device} ({self.reason}): {held}"

    def as_dict(self) -> dict:
        return {"execution": self.execution.value, "device": self.device, "activations": self.activations.value,
                "available_mb": round(self.available_mb, 1), "reason": self.reason,
                "items": [asdict(item) for item in self.items]}


def parameter_bytes(module: torch.nn.Module, dtype: torch.dtype) -> int:
    """What the module's parameters take in ``dtype`` (also for a skeleton on ``meta``)."""
    return sum(p.numel() for p in module.parameters()) * dtype.itemsize


@dataclass(frozen=True)
class PassSize:
    """What a pass holds, in bytes, before deciding where it lives."""

    weights: int
    largest_block: int
    state_total: int
    state_largest_block: int
    activations: int
    batch_working: int


def pass_size(loaded: LoadedModel, calibration: CalibrationSet, layers: list[LinearLayer],
              state_bytes: Callable[[LinearLayer], int], batch_size: int) -> PassSize:
    model = loaded.model
    dtype = next(model.parameters()).dtype
    blocks = decoder_blocks(model)
    per_block = defaultdict(int)
    for layer in layers:
        per_block[block_of(layer.name)] += state_bytes(layer)
    batches = calibration.batch_indices(batch_size, by_length=True)
    lengths = calibration.lengths
    padded = [len(rows) * int(lengths[rows].max()) for rows in batches]
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    widest = max(getattr(config, "intermediate_size", 0) or 0, 4 * loaded.info.hidden_size)
    return PassSize(
        weights=parameter_bytes(model, dtype),
        largest_block=max(parameter_bytes(block, dtype) for block in blocks),
        state_total=sum(per_block.values()),
        state_largest_block=max(per_block.values(), default=0),
        activations=sum(padded) * loaded.info.hidden_size * dtype.itemsize,
        # a batch's widest intermediate tensors (MLP up/gate, their product, the input) while a block runs
        batch_working=max(padded, default=0) * widest * dtype.itemsize * 3,
    )


def _whole(size: PassSize, on_device: bool) -> int:
    return (0 if on_device else size.weights) + size.state_total + size.batch_working


def _blockwise(size: PassSize) -> int:
    return size.largest_block + size.state_largest_block + size.batch_working


def plan_pass(loaded: LoadedModel, size: PassSize, execution: Execution = Execution.AUTO,
              propagate: bool = False, budget: int | None = None) -> MemoryPlan:
    """Whole model or block by block, and where the activations live; ``budget`` (bytes) replaces
    the memory found free on the device (tests, and users who share a GPU)."""
    device = loaded.device
    weights = loaded.weight_source
    on_device = weights.resident and weights.home == device
    free = available_bytes(device) if budget is None else budget
    usable = free * HEADROOM
    whole_fits = on_device and _whole(size, on_device) <= usable
    if execution is Execution.WHOLE and not on_device:
        raise CalibscopeError("A whole-model pass needs the model on its device; this one is offloaded "
                              "(weights in CPU memory or on disk). Use the block-by-block runner.")
    if execution is Execution.AUTO:
        blockwise = propagate or not whole_fits
        reason = ("quantized outputs feed the next block" if propagate else
                  "the model is offloaded" if not on_device else
                  f"the whole-model pass needs {_whole(size, on_device) / MB:,.0f} MB of {free / MB:,.0f} MB free"
                  if not whole_fits else f"everything fits in {free / MB:,.0f} MB free")
    else:
        blockwise = execution is Execution.BLOCKWISE or propagate
        reason = "asked for"
    if not blockwise:
        return _plan(Execution.WHOLE, device, Location.DEVICE, free, reason, [
            ("model weights", size.weights, "device"), ("accumulators, every layer", size.state_total, "device"),
            ("one batch's working memory", size.batch_working, "device")])
    activations = _activation_location(size, device, usable)
    return _plan(Execution.BLOCKWISE, device, activations, free, reason, [
        ("model weights", size.weights, "device" if on_device else "cpu" if weights.resident else "disk"),
        ("one block", size.largest_block, "device"), ("accumulators, one block", size.state_largest_block, "device"),
        ("activations between blocks", size.activations, activations.value),
        ("one batch's working memory", size.batch_working, "device")])


def _activation_location(size: PassSize, device: torch.device, usable: float) -> Location:
    if _blockwise(size) + size.activations <= usable:
        return Location.DEVICE
    if device.type != "cpu" and size.activations <= available_bytes(torch.device("cpu")) * HEADROOM:
        return Location.CPU
    return Location.DISK


def _plan(execution: Execution, device: torch.device, activations: Location, free: int, reason: str,
          items: list[tuple[str, int, str]]) -> MemoryPlan:
    return MemoryPlan(execution, str(device), activations, free / MB, tuple(PlanItem(what, round(b / MB, 2), where)
                                                                              for what, b, where in items), reason)
