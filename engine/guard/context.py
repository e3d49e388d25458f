"""The guard in force for the work running now, and what it holds."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from engine.guard.disk import DiskQuota
from engine.guard.memory import MemoryBudget, Use
from engine.guard.policy import Policy
from engine.guard.reading import ReadLimits


@dataclass(frozen=True)
class ModelLimits:
    """What a hub model may be, decided from its config and its files' sizes before any weight is
    downloaded: ``parameters``, ``download_bytes`` (its files), ``hub_cache_bytes`` (the hub cache is
    trimmed to this after a download). None: no limit."""

    parameters: int | None = None
    download_bytes: int | None = None
    hub_cache_bytes: int | None = None


@dataclass(frozen=True)
class Guard:
    """The input ``policy``, the ``reading`` limits of files, the process's ``memory`` budget and the
    ``disk`` quota (None: none), the models admitted (``models``), where visitors' files are written
    (``work_dir``; None: the system's temporary folder) and the largest batch of a pass."""

    policy: Policy = field(default_factory=Policy)
    reading: ReadLimits = field(default_factory=ReadLimits)
    memory: MemoryBudget | None = None
    disk: DiskQuota | None = None
    models: ModelLimits = field(default_factory=ModelLimits)
    work_dir: Path | None = None
    max_batch_size: int | None = None

    def upload(self, path, what: str) -> Path:
        """A file a visitor gives: the policy's say on the path first, then its size within the read
        limits (what it decodes to is counted by its reader)."""
        found = self.policy.upload(path, what)
        if found.is_file():
            self.reading.check_file(found, what)
        return found

    def reserve_memory(self, what: str, size: int, use: Use = Use.WORK):
        """A context holding ``size`` bytes of the memory budget (nothing to hold without one)."""
        return self.memory.reserve(what, size, use) if self.memory is not None else nullcontext()

    def reserve_disk(self, what: str, size: int):
        """A context holding room for ``size`` bytes of the disk quota (nothing without one)."""
        return self.disk.reserve(what, size) if self.disk is not None else nullcontext()

    def hold(self, owner: object, what: str, size: int | None = None, use: Use = Use.RESULT,
             release: Callable[[], bool] | None = None) -> None:
        """Count what ``owner`` holds (``size`` bytes, or what ``held_bytes`` finds) against the
        memory budget while it lives; ``release`` lets it go when another visitor's work needs room."""
        if self.memory is not None:
            self.memory.hold(owner, what, size, use, release=release)


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
