"""Calibration sets: build one from a corpus and a tokenizer, reproducibly, and rebuild it from its manifest.

``build`` renders and measures the corpus once (batched tokenization), dispatches to the strategy
named by the spec's type, and wraps the result with a manifest (``building.py``). Every strategy is
a function of (context, spec, rng) that returns the sequences and their provenance.
"""
from engine.sampling.building import build, rebuild, spec_from_manifest
from engine.sampling.calibration_set import CalibrationSet, Provenance
from engine.sampling.manifest import Manifest
from engine.sampling.registry import (
    REGISTRY,
    StrategyEntry,
    entry,
    spec_for,
    spec_from_params,
)
from engine.sampling.specs import (
    ActivationClustersSpec,
    Allocation,
    CoverageSpec,
    EmbeddingClustersSpec,
    GptqWindowsSpec,
    LengthStratifiedSpec,
    LlamaChunksSpec,
    PackedSpec,
    RandomSpec,
    Recipe,
    SamplingSpec,
    SelfGeneratedSpec,
    Strategy,
    WindowMode,
)

__all__ = [
    "REGISTRY", "ActivationClustersSpec", "Allocation", "CalibrationSet", "CoverageSpec", "EmbeddingClustersSpec", "GptqWindowsSpec",
    "LengthStratifiedSpec", "LlamaChunksSpec", "Manifest", "PackedSpec", "Provenance", "RandomSpec", "Recipe", "SamplingSpec", "SelfGeneratedSpec",
    "Strategy", "StrategyEntry", "WindowMode", "build", "entry", "rebuild", "spec_for", "spec_from_manifest",
    "spec_from_params",
]
