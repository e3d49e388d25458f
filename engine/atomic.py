"""Atomic publication of files and directories: readers see the whole thing or nothing.

Work happens in a temporary sibling (same filesystem) and is renamed into place at the end; any
exception removes the temporary and leaves the target as it was.
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def staged_directory(target: Path, replace_existing: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory that becomes ``target`` when the block succeeds.

    With ``replace_existing`` an existing target is swapped out only after the new one is whole.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(target, "partial")
    staging.mkdir()
    try:
        yield staging
        retired = None
        if target.exists() and replace_existing:
            retired = _sibling(target, "old")
            os.replace(target, retired)
        os.replace(staging, target)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_file(target: Path, data: bytes | str) -> None:
    """Write ``target`` atomically (a crash leaves the old file or none, never half of one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(target, "partial")
    try:
        staging.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
