"""Model loading: builtin GGUF models with a weight cache, tiny test models, hub and local models."""
from engine.models.builtin import BUILTIN_MODELS, available_builtin_models, cached_checkpoint
from engine.models.cache import ModelCache
from engine.models.layers import (
    LAYER_KINDS,
    ExpertsLayer,
    LayerKind,
    LinearLayer,
    block_of,
    find_experts,
    find_linear_layers,
    tied_head,
)
from engine.models.loading import (
    LoadedModel,
    ModelInfo,
    choose_device,
    choose_dtype,
    cpu_has_native_bfloat16,
    from_model,
    load_model,
)
from engine.models.moefied import DENSE as MOEFIED_DENSE
from engine.models.moefied import DESCRIPTION as MOEFIED_DESCRIPTION
from engine.models.moefied import NAME as MOEFIED
from engine.models.offload import INDEX as SAFETENSORS_INDEX
from engine.models.offload import SINGLE as SAFETENSORS_SINGLE
from engine.models.offload import CheckpointWeights, ResidentWeights, available_bytes
from engine.models.tiny import TINY_MODELS, byte_tokenizer
from engine.models.weight_cache import cache_root

__all__ = [
    "BUILTIN_MODELS",
    "LAYER_KINDS",
    "MOEFIED",
    "MOEFIED_DENSE",
    "MOEFIED_DESCRIPTION",
    "SAFETENSORS_INDEX",
    "SAFETENSORS_SINGLE",
    "TINY_MODELS",
    "CheckpointWeights",
    "ExpertsLayer",
    "LayerKind",
    "LinearLayer",
    "LoadedModel",
    "ModelCache",
    "ModelInfo",
    "ResidentWeights",
    "available_builtin_models",
    "available_bytes",
    "block_of",
    "byte_tokenizer",
    "cache_root",
    "cached_checkpoint",
    "choose_device",
    "choose_dtype",
    "cpu_has_native_bfloat16",
    "find_experts",
    "find_linear_layers",
    "from_model",
    "load_model",
    "tied_head",
]
