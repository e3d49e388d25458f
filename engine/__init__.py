"""calibscope's compute engine: models, corpora, calibration sets, statistics, quantization.

No module here imports gradio; the dashboard (``ui``) and the CLI sit on top of this API.
"""
from engine.corpus import corpus_summary, load_corpus
from engine.errors import (
    CalibscopeError,
    CorpusError,
    ModelLoadError,
    SamplingError,
    SpecError,
)
from engine.models import (
    LinearLayer,
    LoadedModel,
    ModelInfo,
    available_builtin_models,
    find_linear_layers,
    load_model,
)
from engine.progress import Progress, no_progress
from engine.specs import BuiltinCorpus, CorpusKind, CorpusSpec, ModelSpec, Split

__all__ = [
    "BuiltinCorpus",
    "CalibscopeError",
    "CorpusError",
    "CorpusKind",
    "CorpusSpec",
    "LinearLayer",
    "LoadedModel",
    "ModelInfo",
    "ModelLoadError",
    "ModelSpec",
    "Progress",
    "SamplingError",
    "SpecError",
    "Split",
    "available_builtin_models",
    "corpus_summary",
    "find_linear_layers",
    "load_corpus",
    "load_model",
    "no_progress",
]
