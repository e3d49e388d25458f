"""What a deployment allows and how much it may spend: the guard in force for the work running now.

A ``Guard`` holds the input ``Policy`` (what may be read), the ``ReadLimits`` of files, and, on a
shared deployment, the ``MemoryBudget`` and ``DiskQuota`` of the whole process. The dashboard makes
one and runs every handler under it (``guarded``); every loader and pass asks ``current()``, so no
field or upload reaches a file, and no work starts, without the guard's say. Outside ``guarded``
(the CLI, the Python API, tests) the local guard applies: every path allowed, no budgets beyond
the memory actually free.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field

from engine.guard.disk import DiskQuota, tree_bytes
from engine.guard.memory import MemoryBudget, Use, give_back_freed, peak_resident_bytes, resident_bytes
from engine.guard.policy import Policy
from engine.guard.reading import DecodedCount, ReadLimits


@dataclass(frozen=True)
class Guard:
    policy: Policy = field(default_factory=Policy)
    reading: ReadLimits = field(default_factory=ReadLimits)
    memory: MemoryBudget | None = None
    disk: DiskQuota | None = None

    def reserve_memory(self, what: str, size: int, use: Use = Use.WORK):
        """A context holding ``size`` bytes of the memory budget (nothing to hold without one)."""
        return self.memory.reserve(what, size, use) if self.memory is not None else nullcontext()

    def reserve_disk(self, what: str, size: int):
        """A context holding room for ``size`` bytes of the disk quota (nothing without one)."""
        return self.disk.reserve(what, size) if self.disk is not None else nullcontext()

    def hold(self, owner: object, what: str, size: int, use: Use = Use.RESULT) -> None:
        """Count ``size`` bytes against the memory budget while ``owner`` lives."""
        if self.memory is not None:
            self.memory.hold(owner, what, size, use)


LOCAL = Guard()
_active: ContextVar[Guard] = ContextVar("calibscope_guard", default=LOCAL)


def current() -> Guard:
    """The guard of the work running in this thread (the local one outside ``guarded``)."""
    return _active.get()


@contextmanager
def guarded(guard: Guard) -> Iterator[Guard]:
    """Run the block under ``guard``."""
    token = _active.set(guard)
    try:
        yield guard
    finally:
        _active.reset(token)


__all__ = ["LOCAL", "DecodedCount", "DiskQuota", "Guard", "MemoryBudget", "Policy", "ReadLimits", "Use", "current",
           "give_back_freed", "guarded", "peak_resident_bytes", "resident_bytes", "tree_bytes"]
