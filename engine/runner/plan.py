"""The memory plan of a pass: what it holds (weights, one block, accumulators, activations between
blocks, one batch's working memory), where each lives and how many bytes, and therefore whether the
whole model runs at once or block by block, and where the activations wait between blocks.

Known before any forward, from the model's parameter shapes, the calibration set's padded batches
and the accumulators' sizes; shown by the dashboard and the CLI before a run starts. What is free
is the device's free memory, and on the CPU also what the guard's memory budget has left: batches
whose working memory would not fit are split (``fit_batches``), and a pass whose single longest
sample does not fit is refused with the numbers before it starts.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum

import pandas as pd
import torch

from engine import guard
from engine.errors import CalibscopeError, OverBudget
from engine.hooks import decoder_blocks
from engine.models import LinearLayer, LoadedModel, available_bytes, block_of
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

    def disk_bytes(self) -> int:
        """What the pass writes to disk while it runs (activations between blocks, when they wait there)."""
        return int(sum(item.megabytes * MB for item in self.items if Location(item.where) is Location.DISK
                       and item.what != "model weights"))

    def host_bytes(self) -> int:
        """What the pass adds to this process's memory: every item held in CPU memory but the
        model's weights (already counted with the model)."""
        on_cpu = torch.device(self.device).type == "cpu"
        host = {Location.CPU} | ({Location.DEVICE} if on_cpu else set())
        return int(sum(item.megabytes * MB for item in self.items
                       if Location(item.where) in host and item.what != "model weights"))


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


def _text_config(model: torch.nn.Module):
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def batch_working_bytes(loaded: LoadedModel, rows: int, length: int) -> int:
    """What one batch of ``rows`` sequences of ``length`` tokens needs while a block runs: its widest
    intermediate tensors (MLP up/gate, their product, the input) and the attention scores and
    probabilities (float32, per head: eager attention materializes them)."""
    config = _text_config(loaded.model)
    dtype = next(loaded.model.parameters()).dtype
    widest = max(getattr(config, "intermediate_size", 0) or 0, 4 * loaded.info.hidden_size)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1) or 1
    return rows * length * widest * dtype.itemsize * 3 + rows * heads * length * length * 4 * 2


def pass_size(loaded: LoadedModel, calibration: CalibrationSet, layers: list[LinearLayer],
              state_bytes: Callable[[LinearLayer], int], batch_size: int,
              batches: list[list[int]] | None = None) -> PassSize:
    model = loaded.model
    dtype = next(model.parameters()).dtype
    blocks = decoder_blocks(model)
    per_block = defaultdict(int)
    for layer in layers:
        per_block[block_of(layer.name)] += state_bytes(layer)
    batches = batches or calibration.batch_indices(batch_size, by_length=True)
    lengths = calibration.lengths
    shapes = [(len(rows), int(lengths[rows].max())) for rows in batches if len(rows)]
    return PassSize(
        weights=parameter_bytes(model, dtype),
        largest_block=max(parameter_bytes(block, dtype) for block in blocks),
        state_total=sum(per_block.values()),
        state_largest_block=max(per_block.values(), default=0),
        activations=sum(rows * length for rows, length in shapes) * loaded.info.hidden_size * dtype.itemsize,
        batch_working=max((batch_working_bytes(loaded, rows, length) for rows, length in shapes), default=0),
    )


def free_bytes(device: torch.device) -> int:
    """Memory free for a pass on ``device``: the device's free memory, and on the CPU no more than
    what the guard's memory budget has left."""
    free = available_bytes(device)
    memory = guard.current().memory
    if memory is not None and torch.device(device).type == "cpu":
        free = min(free, memory.free())
    return free


def fit_batches(loaded: LoadedModel, calibration: CalibrationSet, batches: list[list[int]],
                fixed: int) -> tuple[list[list[int]], str]:
    """``batches`` split where needed so that each one's working memory, with the pass's ``fixed``
    bytes (accumulators, a block), fits what is really free (a request's ``budget`` moves
    activations and weights off the device, but a batch runs in memory whatever it says), and none
    holds more rows than the guard's largest batch; a note when anything was split. OverBudget when
    one sample alone does not fit."""
    usable = free_bytes(loaded.device) * HEADROOM - fixed
    most_rows = guard.current().max_batch_size
    lengths = calibration.lengths
    fitted: list[list[int]] = []
    for rows in batches:
        if not rows:
            continue
        length = int(lengths[rows].max())
        one = batch_working_bytes(loaded, 1, length)
        if one > usable:
            raise OverBudget(f"One sample of {length:,} tokens needs about {(one + fixed) / MB:,.0f} MB while the model runs, "
                             f"and {max(usable, 0) / MB:,.0f} MB are free for it here. Use shorter samples, fewer layers, or "
                             "try again when other work has finished.")
        step = max(1, min(len(rows), int(usable // one), most_rows or len(rows)))
        fitted.extend(rows[start:start + step] for start in range(0, len(rows), step))
    if len(fitted) == len(batches):
        return fitted, ""
    largest = max(len(rows) for rows in batches)
    return fitted, (f"batches of up to {largest} samples split into {len(fitted)} batches of at most "
                    f"{max(len(rows) for rows in fitted)} to fit the memory free")


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
    free = free_bytes(device) if budget is None else budget
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
    if device.type != "cpu" and size.activations <= free_bytes(torch.device("cpu")) * HEADROOM:
        return Location.CPU
    return Location.DISK


def _plan(execution: Execution, device: torch.device, activations: Location, free: int, reason: str,
          items: list[tuple[str, int, str]]) -> MemoryPlan:
    return MemoryPlan(execution, str(device), activations, free / MB, tuple(PlanItem(what, round(b / MB, 2), where)
                                                                              for what, b, where in items), reason)
