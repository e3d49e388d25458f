"""Random-weight checkpoints in the shapes people quantize, built from the real configs (no download).

Written once into the cache as a transformers checkpoint: config, the byte-level tokenizer of the
tiny models (ids < 260, valid in every vocabulary here), and bf16 safetensors with one file per
decoder block plus one for everything else, indexed like a hub checkpoint. Only one block's tensors
exist in memory while writing, so an 8B checkpoint (16 GB) is written on a machine of any size.
Weights are N(0, 0.02) (norms 1), seeded per tensor name: the same files on every machine.
"""
from __future__ import annotations

import json
import zlib
from collections import defaultdict
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.models import byte_tokenizer, cache_root

ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
SHAPES = {  # the published configs' shapes
    "llama-3.2-1b": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
                     "tie_word_embeddings": True, "rope_theta": 500000.0, "rope_scaling": ROPE_LLAMA3,
                     "max_position_embeddings": 131072, "rms_norm_eps": 1e-5},
    "llama-3.1-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
                     "tie_word_embeddings": False, "rope_theta": 500000.0, "rope_scaling": ROPE_LLAMA3,
                     "max_position_embeddings": 131072, "rms_norm_eps": 1e-5},
    "gemma-3-270m": {"model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
                     "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
                     "sliding_window": 512, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                     "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3},
    "qwen3-30b-a3b": {"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
                      "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": True, "num_hidden_layers": 48,
                      "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936,
                      "tie_word_embeddings": False, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
                      "rms_norm_eps": 1e-6},
}


def config_for(shape: str, layers: int | None = None):
    from transformers import AutoConfig

    values = dict(SHAPES[shape])
    if layers is not None:
        values["num_hidden_layers"] = layers
        if "layer_types" in values:
            values["layer_types"] = values["layer_types"][:layers]
    return AutoConfig.for_model(**values, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def random_tensor(name: str, shape: torch.Size) -> torch.Tensor:
    if name.endswith("norm.weight") or "layernorm" in name:
        return torch.ones(shape, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)


def _file_of(name: str, prefix: str) -> str:
    if name.startswith(prefix + "."):
        return f"block-{int(name[len(prefix) + 1:].split('.')[0]):03d}.safetensors"
    return "rest.safetensors"


def checkpoint(shape: str, layers: int | None = None) -> Path:
    """The checkpoint folder, written on first use."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    folder = cache_root() / "bench-checkpoints" / (shape + (f"-{layers}-layers" if layers else ""))
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = config_for(shape, layers)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    names = defaultdict(list)
    for name, tensor in skeleton.state_dict().items():
        if not (config.tie_word_embeddings and name == "lm_head.weight"):
            names[_file_of(name, "model.layers")].append((name, tensor.shape))
    weight_map = {}
    for file, tensors in sorted(names.items()):
        save_file({name: random_tensor(name, shape) for name, shape in tensors}, folder / file, metadata={"format": "pt"})
        weight_map.update({name: file for name, _ in tensors})
    config.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder
