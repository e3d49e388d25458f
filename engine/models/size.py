"""How large a model is before loading it: its config instantiated on the meta device (no weights,
no memory), so a shared deployment can refuse a model it cannot hold before downloading it."""
from __future__ import annotations

import torch

from engine.models.builtin import BUILTIN_MODELS
from engine.models.moefied import NAME as MOEFIED
from engine.models.sources import explain_load_failure, hub_reachable, looks_like_path
from engine.models.tiny import TINY_MODELS


def is_packaged(name: str) -> bool:
    """Builtin and tiny models: small, known, never downloaded."""
    return name in TINY_MODELS or name in BUILTIN_MODELS or name == MOEFIED


def estimate_parameters(name: str, revision: str | None = None) -> int:
    """Parameter count from the config alone (remote code never run: such a config is refused)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    offline = not looks_like_path(name) and not hub_reachable()
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False, revision=revision, local_files_only=offline)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise explain_load_failure(name, error) from error
    return sum(parameter.numel() for parameter in model.parameters())
