"""An on-disk cache of converted model weights, written atomically.

A cache entry is a directory ``<root>/models/<key>/`` holding a plain transformers checkpoint
(config, safetensors weights, tokenizer) and a marker file written last. The entry is built in a
temporary sibling directory and renamed into place only when complete, so a load that is killed
half-way leaves a temporary directory that no later load trusts.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.atomic import staged_directory

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

    On any exception the temporary directory is removed and nothing is published. An unmarked
    directory already at the entry's place (never trusted) is replaced.
    """
    final = entry_path(key)
    with staged_directory(final, replace_existing=complete_entry(key) is None) as staging:
        yield staging
        marker = {"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **metadata}
        (staging / MARKER).write_text(json.dumps(marker, indent=2))
