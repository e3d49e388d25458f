"""Where a model comes from, and what to tell the user when it cannot be loaded from there."""
from __future__ import annotations

import os

from engine.errors import ModelLoadError


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
    return ModelLoadError(
        f"Could not load '{name}' from the Hugging Face hub ({type(error).__name__}). Check the id, or, "
        "if this machine is offline, use builtin:gemma-3-270m or a local model directory."
    )
