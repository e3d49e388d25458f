"""The memory a deployment may use, kept as a ledger: what the process held when the budget was made
(its imports), the models loaded, the results visitors' sessions keep, and the work running now.
Work is admitted before it starts only if it fits, and refused with the numbers otherwise.

Results are held by their owner object: when the last session holding a report lets it go (the
visitor left, or built a new set), the report is collected and its bytes leave the ledger by
themselves. What the ledger cannot see (allocator caches, fragmentation) is caught by also checking
the process's resident memory before admitting anything.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import resource
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum

from engine.errors import OverBudget

MB = 2**20


class Use(str, Enum):
    """What a ledger entry is, for the refusal's breakdown."""

    MODEL = "models"
    RESULT = "session results"
    WORK = "running work"


def resident_bytes() -> int:
    """This process's resident memory now (Linux; 0 where /proc is absent)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def peak_resident_bytes() -> int:
    """The largest resident memory this process has had (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def give_back_freed() -> None:
    """Ask glibc to return freed heap pages to the system, so resident memory measures what is used."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


M_ARENA_MAX, M_MMAP_THRESHOLD = -8, -3  # mallopt's parameters (malloc.h)


def return_freed_memory_promptly(arenas: int = 2, mmap_threshold: int = 128 * 1024) -> bool:
    """Make glibc give freed memory back at once: blocks of ``mmap_threshold`` bytes or more are
    mapped on their own and unmapped when freed, and at most ``arenas`` arenas keep freed small
    blocks (glibc's default, 8 per core, lets every worker thread keep its own pile). Without it a
    server's resident memory keeps every peak it ever had, and a memory budget measures history,
    not use (measured: 3 GB more than the ledger after two visitors' flows). False where the C
    library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas)) and bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    except (OSError, AttributeError):
        return False


@dataclass
class Entry:
    """What the ledger counts for one model, result or piece of work. ``release``: how the holder of a
    result lets it go on demand (an idle session's Hessians), True when it did; ``touched``: when the
    result was last used."""

    use: Use
    what: str
    bytes: int
    release: Callable[[], bool] | None = None
    touched: float = 0.0


def held_bytes(value: object, depth: int = 0, seen: set | None = None) -> int:
    """The bytes a result holds in tensors, arrays, tables and strings, found through its dataclass
    fields, attributes, mappings and sequences (each buffer counted once)."""
    seen = set() if seen is None else seen
    if depth > 6 or value is None or isinstance(value, (bool, int, float, Enum)) or id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, (str, bytes)):
        return len(value)
    kind = type(value).__module__.split(".")[0]
    if kind == "torch" and hasattr(value, "untyped_storage"):
        storage = value.untyped_storage()
        if ("storage", storage.data_ptr()) in seen:
            return 0
        seen.add(("storage", storage.data_ptr()))
        return storage.nbytes()
    if kind == "numpy" and hasattr(value, "nbytes"):
        return int(value.nbytes)
    if kind == "pandas" and hasattr(value, "memory_usage"):
        usage = value.memory_usage(index=True, deep=False)
        return int(usage.sum() if hasattr(usage, "sum") else usage)
    if kind == "datasets" and hasattr(value, "data"):
        return int(value.data.nbytes)
    if isinstance(value, dict):
        return sum(held_bytes(item, depth + 1, seen) for pair in value.items() for item in pair)
    if isinstance(value, (list, tuple, set, frozenset)):
        return sum(held_bytes(item, depth + 1, seen) for item in value)
    fields = getattr(value, "__dict__", None)
    return sum(held_bytes(item, depth + 1, seen) for item in fields.values()) if isinstance(fields, dict) else 0


class MemoryBudget:
    """``total`` bytes for the whole process; ``baseline`` what it held before any work (measured now
    unless given, and raised to what the process holds whenever no work runs: imports and caches that
    appear later count as the app itself).

    When work would not fit, results that idle sessions hold and can let go (``hold(release=...)``)
    are released first, least recently used first; only then is the work refused. The process's
    resident memory must also leave ``RESIDENT_SHARE`` of the budget for what no ledger sees (the
    allocator, transients of parsing and tokenizing)."""

    RESIDENT_SHARE = 0.9

    def __init__(self, total: int, baseline: int | None = None) -> None:
        self.total = int(total)
        self.baseline = resident_bytes() if baseline is None else int(baseline)
        self._lock = threading.RLock()  # a refusal reads the breakdown while the ledger is locked
        self._entries: dict[int, Entry] = {}
        self._tokens = itertools.count()
        # owners already counted, by identity (a report shared by sessions counts once): (weak reference, token)
        self._held: dict[int, tuple[weakref.ref, int]] = {}

    def used(self) -> int:
        with self._lock:
            return self.baseline + sum(entry.bytes for entry in self._entries.values())

    def free(self) -> int:
        return max(0, self.total - self.used())

    def breakdown(self) -> dict[Use, int]:
        with self._lock:
            totals = {use: 0 for use in Use}
            for entry in self._entries.values():
                totals[entry.use] += entry.bytes
        return totals

    def _refusal(self, what: str, size: int, used: int, resident: int) -> OverBudget:
        parts = ", ".join(f"{use.value} {amount / MB:,.0f} MB" for use, amount in self.breakdown().items() if amount)
        held = f"{used / MB:,.0f} MB are in use (the app itself {self.baseline / MB:,.0f} MB{', ' + parts if parts else ''})"
        if resident > used:
            held += f"; the process holds {resident / MB:,.0f} MB"
        return OverBudget(f"{what} needs about {size / MB:,.0f} MB, and this Space's memory budget is {self.total / MB:,.0f} MB, "
                          f"of which {held}. Ask for less (fewer samples, shorter sequences, a smaller batch or fewer "
                          "layers), or try again when other visitors' work has finished.")

    def _make_room(self, size: int) -> int:
        """Release idle results, least recently used first, until ``size`` more bytes fit; the ledger's
        total afterwards. A result is gone from the ledger once nothing holds it any more."""
        evictable = sorted((entry for entry in self._entries.values() if entry.release is not None), key=lambda e: e.touched)
        used = self.used()
        for entry in evictable:
            if used + size <= self.total:
                break
            if entry.release():
                used = self.used()
        return used

    def admit(self, use: Use, what: str, size: int, refuse: bool = True) -> int:
        """Enter ``size`` bytes in the ledger (OverBudget if they do not fit even after idle results
        were released, unless not ``refuse``); returns the token that ``release`` takes."""
        size = max(0, int(size))
        with self._lock:
            used = self.used()
            if refuse and used + size > self.total:
                used = self._make_room(size)
                if used + size > self.total:
                    raise self._refusal(what, size, used, resident_bytes())
            room = self.total * self.RESIDENT_SHARE
            if refuse and resident_bytes() + size > room:
                give_back_freed()  # freed heap still counted as resident: hand it back before judging
                if resident_bytes() + size > room:
                    self._make_room(size + resident_bytes() - self.used())
                    give_back_freed()
                    resident = resident_bytes()
                    if resident + size > room:
                        raise self._refusal(what, size, self.used(), resident)
            token = next(self._tokens)
            self._entries[token] = Entry(use, what, size)
            return token

    def settle(self) -> None:
        """With no work running, count what the process holds beyond its models and results as the app
        itself (a baseline measured at start misses what loads later)."""
        with self._lock:
            if any(entry.use is Use.WORK for entry in self._entries.values()):
                return
            give_back_freed()
            held = sum(entry.bytes for entry in self._entries.values())
            self.baseline = max(self.baseline, resident_bytes() - held)

    def release(self, token: int) -> None:
        with self._lock:
            self._entries.pop(token, None)

    @contextmanager
    def reserve(self, what: str, size: int, use: Use = Use.WORK) -> Iterator[None]:
        """Hold ``size`` bytes while the block runs; OverBudget before it starts if they do not fit."""
        token = self.admit(use, what, size)
        try:
            yield
        finally:
            self.release(token)

    def hold(self, owner: object, what: str, size: int | None = None, use: Use = Use.RESULT, refuse: bool = False,
             release: Callable[[], bool] | None = None) -> None:
        """Count ``size`` bytes (``held_bytes(owner)`` when not given) for as long as ``owner`` lives:
        a session's result, counted once however many sessions hold it (holding it again marks it
        used now). A result that already exists is counted, not refused, unless ``refuse``;
        ``release`` lets it go when room is needed (see ``_make_room``)."""
        key = id(owner)
        with self._lock:
            known = self._held.get(key)
            if known is not None and known[0]() is owner:
                entry = self._entries.get(known[1])
                if entry is not None:
                    entry.touched = time.monotonic()
                    entry.release = release or entry.release
                return
            size = held_bytes(owner) if size is None else size
            token = self.admit(use, what, size, refuse=refuse)
            try:
                self._held[key] = (weakref.ref(owner), token)
            except TypeError:  # an object that cannot be watched (no weak references): not counted
                self.release(token)
                return
            self._entries[token].release, self._entries[token].touched = release, time.monotonic()
        weakref.finalize(owner, self._forget, key, token)

    def _forget(self, key: int, token: int) -> None:
        with self._lock:
            known = self._held.get(key)
            if known is not None and known[1] == token:
                del self._held[key]
        self.release(token)

    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries.values())
