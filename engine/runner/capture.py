"""What each decoder block is called with, captured without running any block.

A model's forward computes, before its loop over blocks, everything the blocks need besides the
hidden states: attention masks (per attention type: Gemma's sliding and global layers get different
ones), rotary position embeddings, position ids. Running the model once per batch with every block
replaced by a stub that records its arguments and passes the hidden states through costs an
embedding lookup and the mask construction, and yields block 0's input and every block's call, so
that block i can later be run alone on stored activations exactly as the whole model would run it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from engine.hooks import StopForward, headless_forward


@dataclass
class BlockCall:
    """The arguments a block is called with, besides the hidden states."""

    args: tuple
    kwargs: dict

    def run(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The block's output hidden states for ``hidden`` (blocks return a tensor or a tuple)."""
        out = block(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out


@dataclass
class CapturedBatch:
    hidden: torch.Tensor  # block 0's input [batch, time, hidden]
    calls: list[BlockCall]  # one per block


@contextmanager
def _stubbed(blocks: nn.ModuleList) -> Iterator[tuple[dict, list]]:
    first: dict[str, torch.Tensor] = {}
    calls: list[BlockCall | None] = [None] * len(blocks)

    def stub(index: int):
        def forward(*args, **kwargs):
            hidden = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
            rest = args if "hidden_states" in kwargs else args[1:]
            if index == 0:
                first["hidden"] = hidden
            calls[index] = BlockCall(tuple(rest), kwargs)
            if index == len(blocks) - 1:
                raise StopForward  # nothing after the last block is needed
            return hidden

        return forward

    try:
        for index, block in enumerate(blocks):
            block.forward = stub(index)  # an instance attribute: nn.Module.__call__ finds it first
        yield first, calls
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


def capture_batch(model: nn.Module, blocks: nn.ModuleList, inputs: dict[str, torch.Tensor]) -> CapturedBatch:
    """Block 0's input and every block's call for one batch (``inputs`` on the model's device)."""
    with _stubbed(blocks) as (first, calls), torch.inference_mode():
        headless_forward(model, inputs)
    if "hidden" not in first or any(call is None for call in calls):
        raise RuntimeError("The model's forward did not call every decoder block in order; it cannot be run block by block.")
    return CapturedBatch(first["hidden"], calls)


def moved(value, device: torch.device, memo: dict | None = None):
    """``value`` (tensors in any nesting of tuples, lists and dicts) on ``device``; a tensor shared
    by several places (one mask for every full-attention block) is moved once and stays shared."""
    memo = {} if memo is None else memo
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.to(device, non_blocking=True)
        return memo[id(value)]
    if isinstance(value, BlockCall):
        return BlockCall(moved(value.args, device, memo), moved(value.kwargs, device, memo))
    if isinstance(value, (list, tuple)):
        return type(value)(moved(item, device, memo) for item in value)
    if isinstance(value, dict):
        return {key: moved(item, device, memo) for key, item in value.items()}
    return value


def tensor_bytes(value, seen: set | None = None) -> int:
    """Bytes of the distinct tensors in ``value`` (shared tensors counted once)."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        if id(value) in seen:
            return 0
        seen.add(id(value))
        return value.numel() * value.element_size()
    if isinstance(value, BlockCall):
        return tensor_bytes(value.args, seen) + tensor_bytes(value.kwargs, seen)
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(item, seen) for item in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(item, seen) for item in value.values())
    return 0
