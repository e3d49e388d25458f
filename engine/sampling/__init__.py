"""Calibration sets: build one from a corpus and a tokenizer, reproducibly, and rebuild it from its manifest.

``build`` renders and measures the corpus once (batched tokenization), dispatches to the strategy
named by the spec's type, and wraps the result with a manifest (``building.py``). Every strategy is
a function of (context, spec, rng) that returns the sequences and their provenance.
"""
from engine.sampling.building import build, rebuild, spec_from_manifest
from engine.sampling.calibration_set import CalibrationSet, Provenance
from engine.sampling.cover import Target, coverage_table, outlier_targets, score_sequences
from engine.sampling.manifest import Manifest
from engine.sampling.recipes import rows_dataset
from engine.sampling.registry import (
    REGISTRY,
    StrategyEntry,
    corpus_strategies,
    entry,
    spec_for,
    spec_from_params,
)
from engine.sampling.specs import (
    DEFAULT_EDGES,
    LEGACY_LENGTH_NAMES,
    MIN_TOKENS,
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
    SuppliedSpec,
    WindowMode,
)
from engine.sampling.supplied import supplied_set
from engine.sampling.tokens import inference_prefix

__all__ = ["DEFAULT_EDGES", "LEGACY_LENGTH_NAMES", "MIN_TOKENS", "REGISTRY", "ActivationClustersSpec", "Allocation",
           "CalibrationSet", "CoverageSpec", "EmbeddingClustersSpec", "GptqWindowsSpec", "LengthStratifiedSpec",
           "LlamaChunksSpec", "Manifest", "PackedSpec", "Provenance", "RandomSpec", "Recipe", "SamplingSpec",
           "SelfGeneratedSpec", "Strategy", "StrategyEntry", "SuppliedSpec", "Target", "WindowMode", "build",
           "corpus_strategies", "coverage_table", "entry", "inference_prefix", "outlier_targets", "rebuild", "rows_dataset",
           "score_sequences", "spec_for", "spec_from_manifest", "spec_from_params", "supplied_set"]
