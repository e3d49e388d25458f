"""Reusable buffers for the per-batch temporaries of accumulators on the CPU.

A fresh CPU tensor of 32 MiB (4,096 tokens x 2,048 channels in float32) is past glibc's largest
mmap threshold, so every allocation maps new pages and pays a page fault per 4 KiB on first touch:
measured 13-16 ms to allocate and fill where the operation itself takes 2-3 ms. An accumulator
update makes four such temporaries per batch (the float copy of a bf16 input, its squares, |x|'s
bits, the per-channel bin index), which made up most of the statistics pass's overhead. Taking them
from buffers that live for the pass removes that cost; the arithmetic is unchanged.

Buffers are per thread (sessions on other threads never share them) and per name (two temporaries
alive at once never alias), grown to the largest size asked, and dropped when the outermost
``pass_scratch()`` block ends, so nothing outlives a pass. Off the CPU (and outside a pass) ``take``
allocates normally: CUDA's caching allocator already reuses memory.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_LOCAL = threading.local()


@contextmanager
def pass_scratch() -> Iterator[None]:
    """Buffers reused within the block (nested blocks share the outermost one's)."""
    outermost = getattr(_LOCAL, "buffers", None) is None
    if outermost:
        _LOCAL.buffers = {}
    try:
        yield
    finally:
        if outermost:
            _LOCAL.buffers = None


def take(name: str, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized tensor for a temporary that is dead before ``name`` is taken again."""
    buffers = getattr(_LOCAL, "buffers", None)
    if buffers is None or device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    size = math.prod(shape)
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.numel() < size:
        buffer = buffers[(name, dtype)] = torch.empty(size, dtype=dtype, device=device)
    return buffer[:size].view(shape)


def as_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 (itself when it already is), any other dtype copied into a buffer."""
    if x.dtype == torch.float32:
        return x
    return take("float32", x.shape, torch.float32, x.device).copy_(x)
