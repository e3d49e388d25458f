"""How large a model is before loading it, from its config's numbers alone: no model is built (not
even on the meta device), so a forged config (millions of layers, absurd widths) costs arithmetic,
not memory, and is refused for its numbers before anything is downloaded."""
from __future__ import annotations

import json
import os
from pathlib import Path

from engine.errors import ModelLoadError
from engine.models.builtin import BUILTIN_MODELS
from engine.models.moefied import NAME as MOEFIED
from engine.models.sources import explain_load_failure, hub_reachable, looks_like_path
from engine.models.tiny import TINY_MODELS

CONFIG_BYTES = 2**20  # a config.json larger than this is not a model's config
# Every count a config gives must lie in this range: the largest released models stay far inside it.
MAX_COUNT = {"vocab_size": 10_000_000, "hidden_size": 1_000_000, "intermediate_size": 10_000_000, "num_hidden_layers": 10_000,
             "num_attention_heads": 100_000, "num_key_value_heads": 100_000, "head_dim": 100_000, "num_experts": 100_000,
             "moe_intermediate_size": 10_000_000, "shared_expert_intermediate_size": 10_000_000}
ALIASES = {"hidden_size": ("hidden_size", "n_embd", "d_model"), "num_hidden_layers": ("num_hidden_layers", "n_layer"),
           "num_attention_heads": ("num_attention_heads", "n_head"), "intermediate_size": ("intermediate_size", "n_inner"),
           "num_experts": ("num_experts", "num_local_experts", "n_routed_experts")}
# parameters of the packaged models, counted once from the loaded models (tiny ones are a few thousand)
PACKAGED_PARAMETERS = {"builtin:gemma-3-270m": 268_098_176, "builtin:smollm2-135m": 134_515_008, MOEFIED: 268_098_176}


def is_packaged(name: str) -> bool:
    """Builtin and tiny models: small, known, never downloaded."""
    return name in TINY_MODELS or name in BUILTIN_MODELS or name == MOEFIED


def _count(config: dict, key: str, default: int | None = None) -> int | None:
    value = next((config[alias] for alias in ALIASES.get(key, (key,)) if config.get(alias) is not None), default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_COUNT[key]:
        raise ModelLoadError(f"The model's config gives {key} = {value!r}, which no model has (expected a whole number from "
                             f"1 to {MAX_COUNT[key]:,}); it was not loaded.")
    return value


def parameters_from_config(config: dict) -> int:
    """The parameter count of a decoder-only transformer described by ``config`` (a config.json's
    content; a multimodal config's ``text_config`` counts): embeddings and head (unless tied), per
    block attention (grouped-query heads), the MLP (gated: three matrices) or its experts and shared
    expert, and the norms. An estimate for admission: exact for Llama-style layouts."""
    if not isinstance(config, dict):
        raise ModelLoadError("The model's config is not a JSON object; it was not loaded.")
    text = config.get("text_config")
    if isinstance(text, dict):
        config = {**config, **text}
    hidden = _count(config, "hidden_size")
    layers = _count(config, "num_hidden_layers")
    vocab = _count(config, "vocab_size")
    if hidden is None or layers is None or vocab is None:
        raise ModelLoadError("The model's config gives no hidden size, layer count or vocabulary: is it a causal language "
                             "model's config.json?")
    heads = _count(config, "num_attention_heads", 1)
    kv_heads = _count(config, "num_key_value_heads", heads)
    head_dim = _count(config, "head_dim", max(1, hidden // heads))
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    intermediate = _count(config, "intermediate_size", 4 * hidden)
    experts = _count(config, "num_experts")
    if experts:
        expert_width = _count(config, "moe_intermediate_size", intermediate)
        shared = _count(config, "shared_expert_intermediate_size", 0) or 0
        mlp = experts * 3 * hidden * expert_width + hidden * experts + 3 * hidden * shared
    else:
        mlp = 3 * hidden * intermediate
    norms = 2 * hidden
    head = 0 if config.get("tie_word_embeddings") is True else vocab * hidden  # untied unless said: the larger count
    return vocab * hidden + head + layers * (attention + mlp + norms) + hidden


def read_config(path: Path) -> dict:
    """A config.json, refused when it is too large to be one or is not JSON."""
    if path.stat().st_size > CONFIG_BYTES:
        raise ModelLoadError(f"The model's config.json is {path.stat().st_size / 2**20:,.1f} MiB, which no config is; it was "
                             "not loaded.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ModelLoadError(f"The model's config.json is not valid JSON ({type(error).__name__}).") from None


def config_file(name: str, revision: str | None = None) -> Path:
    """The config.json of a local folder or a hub model (downloaded alone, at ``revision``)."""
    if looks_like_path(name):
        path = Path(os.path.expanduser(name)) / "config.json"
        if not path.is_file():
            raise ModelLoadError(f"The model directory '{name}' has no config.json.")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(name, "config.json", revision=revision, local_files_only=not hub_reachable()))
    except (OSError, ValueError) as error:
        raise explain_load_failure(name, error) from error


def estimate_parameters(name: str, revision: str | None = None) -> int:
    """Parameter count from the config's numbers alone (packaged models: known)."""
    if name in PACKAGED_PARAMETERS:
        return PACKAGED_PARAMETERS[name]
    if name in TINY_MODELS:
        return 0
    return parameters_from_config(read_config(config_file(name, revision)))
