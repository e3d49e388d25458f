"""Hugging Face module names -> llama.cpp tensor names, from the ``gguf`` package's own maps.

``gguf.get_tensor_name_map(arch, n_blocks)`` is the table llama.cpp's converter uses: it knows
every architecture's module paths, so nothing here lists tensor names by hand. What is left is which
gguf architecture a transformers ``model_type`` is, and fused expert tensors (one HF parameter for
gate and up) that llama.cpp stores as two tensors.
"""
from __future__ import annotations

from functools import lru_cache

from engine.errors import CalibscopeError

# model_types whose llama.cpp architecture has another name (the converter writes these as such).
ARCH_ALIASES = {"mixtral": "llama", "mistral": "llama", "cohere": "command-r", "gpt_oss": "gpt-oss",
                "minimax_m2": "minimax-m2"}


def gguf_arch_name(model_type: str) -> str:
    """llama.cpp's architecture name for a transformers ``model_type`` (raises when gguf has none)."""
    import gguf

    known = set(gguf.MODEL_ARCH_NAMES.values())
    base = model_type.removesuffix("_text")
    for candidate in (ARCH_ALIASES.get(model_type), model_type, base, base.replace("_", ""), base.replace("_", "-")):
        if candidate in known:
            return candidate
    raise CalibscopeError(f"llama.cpp (gguf {gguf.__version__ if hasattr(gguf, '__version__') else ''}) has no "
                          f"architecture for model type '{model_type}': its importance matrix cannot be named.")


@lru_cache(maxsize=16)
def _name_map(arch_name: str, blocks: int):
    import gguf

    arch = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch_name)
    return gguf.get_tensor_name_map(arch, blocks)


def gguf_weight_names(module: str, model_type: str, blocks: int) -> tuple[str, ...]:
    """The llama.cpp weight tensor(s) a HF module or parameter path feeds, e.g.
    ``model.layers.0.self_attn.q_proj`` -> ``("blk.0.attn_q.weight",)``; a fused ``gate_up_proj``
    -> the gate and up tensors. Empty when llama.cpp has no such tensor."""
    names = _name_map(gguf_arch_name(model_type), blocks)
    if module.endswith("gate_up_proj"):
        stem = module.removesuffix("gate_up_proj")
        parts = [names.get_name(stem + "gate_proj"), names.get_name(stem + "up_proj")]
    else:
        parts = [names.get_name(module)]
    return tuple(f"{part}.weight" for part in parts if part)
