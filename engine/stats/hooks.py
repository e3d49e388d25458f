"""Forward hooks that only observe, removed whatever happens."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

Observer = Callable[[torch.Tensor], None]


class StopForward(Exception):
    """Raised by an observer once everything asked for is seen: the rest of the forward is skipped."""


@contextmanager
def observing(points: Sequence[tuple[nn.Module, str, Observer]]) -> Iterator[None]:
    """Attach ``observer(tensor)`` to each (module, "input" | "output") point for the block's duration.

    Every handle is removed in ``finally``: an exception inside the forward (including StopForward)
    leaves the model exactly as it was.
    """
    handles = []
    try:
        for module, side, observer in points:
            if side == "input":
                handles.append(module.register_forward_pre_hook(lambda _m, args, fn=observer: fn(args[0])))
            else:
                handles.append(module.register_forward_hook(lambda _m, _a, out, fn=observer: fn(out)))
        yield
    finally:
        for handle in handles:
            handle.remove()
