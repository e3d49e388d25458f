"""Atomic publication of files and directories: readers see the whole thing or nothing.

Work happens in a temporary sibling (same filesystem) and is renamed into place at the end; any
exception removes the temporary and leaves the target as it was. A directory published without
``replace_existing`` never replaces anything, not even a folder someone created under that name
while the work ran (rename(2) would silently replace an empty one): Linux's renameat2 with
RENAME_NOREPLACE refuses it atomically.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


AT_FDCWD, RENAME_NOREPLACE = -100, 1


def _renameat2():
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def rename_without_replacing(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, FileExistsError if ``target`` exists (atomically where the
    system has renameat2; elsewhere checked just before the rename)."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, f"'{target}' appeared while it was being written; it was left as it is", str(target))
        if code not in (errno.ENOSYS, errno.EINVAL):  # a filesystem without the flag: fall back below
            raise OSError(code, os.strerror(code), str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, f"'{target}' appeared while it was being written; it was left as it is", str(target))
    os.rename(source, target)


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
        if replace_existing:
            os.replace(staging, target)
        else:
            rename_without_replacing(staging, target)
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
