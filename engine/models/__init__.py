"""Model loading: builtin GGUF models with a weight cache, tiny test models, hub and local models."""
from engine.models.builtin import available_builtin_models
from engine.models.cache import ModelCache
from engine.models.layers import ExpertsLayer, LinearLayer, find_experts, find_linear_layers
from engine.models.loading import (
    LoadedModel,
    ModelInfo,
    choose_device,
    choose_dtype,
    from_model,
    load_model,
)
from engine.models.tiny import TINY_MODELS

__all__ = [
    "TINY_MODELS",
    "ExpertsLayer",
    "LinearLayer",
    "LoadedModel",
    "ModelCache",
    "ModelInfo",
    "available_builtin_models",
    "choose_device",
    "choose_dtype",
    "find_experts",
    "find_linear_layers",
    "from_model",
    "load_model",
]
