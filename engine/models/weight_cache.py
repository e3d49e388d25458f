"""An on-disk cache of converted model weights, written atomically.

A cache entry is a directory ``<root>/models/<key>/`` holding a plain transformers checkpoint
(config, safetensors weights, tokenizer) and a marker file written last. The entry is built in a
temporary sibling directory and renamed into place only when complete, so a load that is killed
half-way leaves a temporary directory that no later load trusts.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = "calibscope-cache.json"


def cache_root() -> Path:
    """The user cache directory: ``$CALIBSCOPE_CACHE`` or ``~/.cache/calibscope``."""
    configured = os.environ.get("CALIBSCOPE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "calibscope"


def entry_path(key: str) -> Path:
    return cache_root() / "models" / key


def complete_entry(key: str) -> Path | None:
    """The cache directory for ``key`` if a complete entry exists, else None."""
    path = entry_path(key)
    return path if (path / MARKER).is_file() else None


@contextmanager
def building_entry(key: str, metadata: dict) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it becomes the entry for ``key``.

    On any exception the temporary directory is removed and nothing is published.
    """
    final = entry_path(key)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{key}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        marker = {"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **metadata}
        (staging / MARKER).write_text(json.dumps(marker, indent=2))
        if final.exists() and complete_entry(key) is None:
            shutil.rmtree(final)  # an unmarked leftover: never trusted, safe to replace
        try:
            os.replace(staging, final)
        except OSError:
            if complete_entry(key) is None:  # lost a race to nobody: a real failure
                raise
            shutil.rmtree(staging, ignore_errors=True)  # another process published first
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
