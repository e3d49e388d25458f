"""What a pass is asked to do, whichever runner does it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.hooks import Side
from engine.models import ExpertsLayer, LinearLayer
from engine.runner.plan import Execution, MemoryPlan

Factory = Callable[[int, torch.device], object]  # (channels, device) -> accumulator with update(x, tokens)
# -> accumulator with update(hidden [T, H], routing [T, k], routing weights [T, k], tokens: TokenIndex)
ExpertsFactory = Callable[[ExpertsLayer, torch.device], object]


@dataclass
class FinishedBlock:
    """A block whose batches have all been seen: its index (-1: layers outside the blocks), its
    accumulators (pop what you consume: Hessians handed to GPTQ or written out are freed at once)
    and which of its layers share another's accumulator."""

    index: int
    accumulators: dict[str, object]
    shared: dict[str, str]


# -> weights (module name -> [out, in] in the module's layout) to run the block with before its
# outputs go on, so the next block sees quantized outputs; or None.
AfterBlock = Callable[[FinishedBlock], dict[str, torch.Tensor] | None]


@dataclass(frozen=True)
class PassRequest:
    """layers and sides to observe, the accumulator ``factory`` and what it costs per layer
    (``state_bytes``, for the memory plan), batching, and what to do with each finished block;
    ``experts``: MoE experts modules observed with ``experts_factory``'s accumulators.
    ``propagate``: after_block's weights replace the block's for its outputs (only the
    block-by-block runner can do that). ``true_sequential`` (block by block, inputs only): after_block
    is called once per group of layers that read one input, in the order the forward reaches them,
    each group observed with the weights after_block returned for the groups before it."""

    layers: list[LinearLayer]
    sides: tuple[Side, ...]
    factory: Factory
    state_bytes: Callable[[LinearLayer], int]
    batch_size: int = 8
    share_inputs: bool = True
    batches: list[list[int]] | None = None
    after_block: AfterBlock | None = None
    propagate: bool = False
    execution: Execution = Execution.AUTO
    budget: int | None = None  # bytes: replaces the memory found free (tests; a shared GPU)
    experts: tuple[ExpertsLayer, ...] = ()  # MoE experts modules whose routed inputs are observed too
    experts_factory: ExpertsFactory | None = None
    true_sequential: bool = False


@dataclass
class PassResult:
    accumulators: dict[str, object]
    shared: dict[str, str]  # layer key -> the key whose accumulator it reuses
    plan: MemoryPlan | None = None
    meta: dict = field(default_factory=dict)
