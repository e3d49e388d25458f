"""One disk quota for a whole deployment, counted across visitors: every folder the app writes to
(its own working folder with each visitor's downloads, Gradio's upload and download cache, the hub
cache, calibscope's weight and llama.cpp caches) is summed, and a write is admitted before it starts
only if what is on disk, plus what running writes reserved, plus it, fits the quota.

``sweep`` removes what a crash or a killed process left (staging folders and partial files, which
nothing else trusts) when the app starts.
"""
from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import OverBudget

MB = 2**20
# staging names: engine.atomic's, the GGUF and checkpoint temporaries, the hub's unfinished downloads
STALE_MARKERS = (".partial", "-partial", ".tmp-", ".incomplete")


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (links not followed, vanished files skipped)."""
    total = 0
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


def _outermost(roots: Iterable[Path]) -> tuple[Path, ...]:
    """The roots with any root inside another dropped, so no file is counted twice."""
    resolved = sorted({Path(root).expanduser().resolve() for root in roots}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for root in resolved:
        if not any(root == other or other in root.parents for other in kept):
            kept.append(root)
    return tuple(kept)


class DiskQuota:
    """``total`` bytes over ``roots``. Usage is measured on demand (a walk of the roots, remembered
    for ``refresh_s`` seconds so that a burst of requests walks once)."""

    def __init__(self, total: int, roots: Iterable[Path], refresh_s: float = 1.0) -> None:
        self.total = int(total)
        self.roots = _outermost(roots)
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._reserved: dict[int, tuple[str, int]] = {}
        self._tokens = itertools.count()
        self._measured: tuple[float, int] = (-1e9, 0)

    def usage(self, fresh: bool = False) -> int:
        """Bytes on disk under the roots now."""
        at, size = self._measured
        if fresh or time.monotonic() - at > self.refresh_s:
            size = sum(tree_bytes(root) for root in self.roots if root.exists())
            self._measured = (time.monotonic(), size)
        return size

    def reserved(self) -> int:
        with self._lock:
            return sum(size for _, size in self._reserved.values())

    @contextmanager
    def reserve(self, what: str, size: int) -> Iterator[None]:
        """Room for ``size`` more bytes while the write runs; OverBudget before it starts otherwise."""
        size = max(0, int(size))
        with self._lock:
            on_disk = self.usage(fresh=True)
            pending = sum(amount for _, amount in self._reserved.values())
            if on_disk + pending + size > self.total:
                raise OverBudget(f"{what} would write about {size / MB:,.0f} MB, and this Space's disk quota is "
                                 f"{self.total / MB:,.0f} MB with {on_disk / MB:,.0f} MB on disk and {pending / MB:,.0f} MB "
                                 "being written by other visitors. Download and clear what you prepared (or leave it out), "
                                 "or try again later.")
            token = next(self._tokens)
            self._reserved[token] = (what, size)
        try:
            yield
        finally:
            with self._lock:
                self._reserved.pop(token, None)
            self._measured = (-1e9, 0)

    def sweep(self, older_than_s: float = 0.0) -> list[Path]:
        """Remove staging leftovers (names with a partial or temporary marker) older than
        ``older_than_s`` seconds under every root; returns what was removed."""
        removed = []
        now = time.time()
        for root in self.roots:
            if not root.exists():
                continue
            for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
                if not any(marker in path.name for marker in STALE_MARKERS):
                    continue
                try:
                    if now - path.lstat().st_mtime < older_than_s:
                        continue
                    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                    removed.append(path)
                except OSError:
                    continue
        return removed
