"""Where a model comes from, and what to tell the user when it cannot be loaded from there."""
from __future__ import annotations

import os
import socket
import time
from urllib.parse import urlparse

from engine.errors import HubUnavailable, ModelLoadError
from engine.models.builtin import available_builtin_models

REACHABILITY_TTL_S = 60.0
_reachability: dict[str, tuple[float, bool]] = {}  # endpoint -> (checked at, reachable): a cache, not state


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds (asked at
    most once a minute). Offline, every hub call then goes to the local cache only, instead of
    retrying with back-off for most of a minute before failing."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    checked = _reachability.get(endpoint)
    if checked is not None and time.monotonic() - checked[0] < REACHABILITY_TTL_S:
        return checked[1]
    host = urlparse(endpoint)
    try:
        with socket.create_connection((host.hostname, host.port or 443), timeout=timeout):
            reachable = True
    except OSError:
        reachable = False
    _reachability[endpoint] = (time.monotonic(), reachable)
    return reachable


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(name))


def explain_load_failure(name: str, error: Exception) -> ModelLoadError:
    text = str(error)
    if "trust_remote_code" in text or "remote code" in text.lower():
        return ModelLoadError(
            f"'{name}' needs to run its own Python code (trust_remote_code), which calibscope never "
            "does. Pick a model whose architecture transformers supports natively."
        )
    if looks_like_path(name):
        return ModelLoadError(
            f"Could not load a model from the directory '{name}': {text.splitlines()[0] if text else error!r}. "
            "It needs config.json, weights (safetensors or bin) and tokenizer files."
        )
    reason = "the hub cannot be reached and it is not in the local cache" if not hub_reachable() else type(error).__name__
    return HubUnavailable(name, reason, tuple(available_builtin_models()))
