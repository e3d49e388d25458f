"""The one table of sampling strategies: Strategy -> spec class -> builder, and what each needs.

The dashboard, the comparison experiment, the config parser and ``build`` all read this table, so
a new strategy is one module (its builder), one spec class and one row here.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.errors import SpecError
from engine.sampling import specs
from engine.sampling.cluster_selection import activation_clusters, embedding_clusters
from engine.sampling.context import Draft, SamplingContext
from engine.sampling.coverage_selection import coverage
from engine.sampling.gptq_windows import gptq_windows
from engine.sampling.length_stratified import length_stratified
from engine.sampling.llama_chunks import llama_chunks
from engine.sampling.packed import packed
from engine.sampling.random_documents import random_documents
from engine.sampling.self_generated import self_generated
from engine.sampling.specs import SamplingSpec, Strategy
from engine.sampling.supplied import not_built
from engine.specs import choice

Builder = Callable[[SamplingContext, SamplingSpec, np.random.Generator], Draft]
# Length-stratified sets made from a length alone (comparisons) use these edges up to it.
FINE_EDGES = (16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class StrategyEntry:
    """How one strategy is built and presented.

    options: the spec fields beyond nsamples / seed / length that a user sets for it (the
    dashboard shows those controls); exact_length: every sample is exactly ``length`` tokens
    (windows), otherwise ``length`` is a maximum; needs_model: the builder runs the target model.
    """

    strategy: Strategy
    spec_type: type[SamplingSpec]
    builder: Builder
    summary: str
    options: tuple[str, ...] = ()
    exact_length: bool = False
    needs_model: bool = False
    from_corpus: bool = True  # False: loaded as given (supplied windows), not offered as a way to build

REGISTRY: dict[Strategy, StrategyEntry] = {entry.strategy: entry for entry in (
    StrategyEntry(Strategy.RANDOM, specs.RandomSpec, random_documents,
                  "Whole documents drawn at random, truncated to the length.", options=("min_tokens",)),
    StrategyEntry(Strategy.LENGTH_STRATIFIED, specs.LengthStratifiedSpec, length_stratified,
                  "Documents drawn per length bucket; long documents are cut into windows, not dropped.",
                  options=("edges", "allocation", "min_tokens")),
    StrategyEntry(Strategy.GPTQ_WINDOWS, specs.GptqWindowsSpec, gptq_windows,
                  "GPTQ's recipe: random windows of exactly the length (joined corpus, or c4-style document rejection).",
                  options=("mode", "recipe"), exact_length=True),
    StrategyEntry(Strategy.PACKED, specs.PackedSpec, packed,
                  "Documents concatenated with EOS between them and cut into full blocks (AWQ style).", exact_length=True),
    StrategyEntry(Strategy.EMBEDDING_CLUSTERS, specs.EmbeddingClustersSpec, embedding_clusters,
                  "Sentence embeddings (MiniLM) of the documents, k-means, the document nearest each centroid: "
                  "one sample per region of the corpus.", options=("min_tokens",)),
    StrategyEntry(Strategy.ACTIVATION_CLUSTERS, specs.ActivationClustersSpec, activation_clusters,
                  "The same with the model's own hidden states (middle block) as embeddings: diversity where the "
                  "quantizer looks. Runs the model on 256 candidates.", options=("min_tokens",), needs_model=True),
    StrategyEntry(Strategy.SELF_GENERATED, specs.SelfGeneratedSpec, self_generated,
                  "Text sampled from the model itself from BOS (temperature 1.5 falling to 0.8): no data needed; "
                  "ignores the corpus.", needs_model=True),
    StrategyEntry(Strategy.LLAMA_CHUNKS, specs.LlamaChunksSpec, llama_chunks,
                  "llama.cpp's chunks (llama-imatrix, llama-perplexity): the corpus joined, cut into consecutive "
                  "chunks of exactly the length, each starting with BOS; the first ones, in order.", exact_length=True),
    StrategyEntry(Strategy.COVERAGE, specs.CoverageSpec, coverage,
                  "Greedy set cover of the outlier channels (and MoE experts) of 256 candidates, scored by the model "
                  "in one pass: samples that together excite every channel with outliers.", options=("min_tokens",),
                  needs_model=True),
    StrategyEntry(Strategy.SUPPLIED, specs.SuppliedSpec, not_built,
                  "Token windows made elsewhere, loaded as they are (engine.sampling.supplied).", from_corpus=False),
)}


def corpus_strategies() -> list[Strategy]:
    """The strategies that build a set from a corpus, in their declared order."""
    return [strategy for strategy, found in REGISTRY.items() if found.from_corpus]


def entry(strategy: Strategy | str) -> StrategyEntry:
    return REGISTRY[choice(Strategy, strategy, "strategy")]


def edges_up_to(length: int, grid: tuple[int, ...] = FINE_EDGES) -> tuple[int, ...]:
    """Bucket edges of ``grid`` below ``length``, closed by ``length`` itself."""
    return tuple(e for e in grid if e < length) + (length,)


def spec_for(strategy: Strategy | str, *, nsamples: int, length: int, seed: int = 0, **options) -> SamplingSpec:
    """The strategy's spec with ``nsamples`` samples of at most ``length`` tokens; ``options`` are
    further spec fields (SpecError for a field the strategy does not take).

    A length-stratified spec without ``edges`` gets ``edges_up_to(length)``; cluster specs get at
    least ``nsamples`` candidates."""
    chosen = entry(strategy)
    fields = chosen.spec_type.field_names()
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise SpecError(f"The {chosen.strategy.value} strategy does not take {unknown}; it takes {', '.join(fields)}.")
    values = {"nsamples": nsamples, "seed": seed, **options}
    if "length" in fields:
        values["length"] = length
    elif "edges" not in options:
        values["edges"] = edges_up_to(length)
    if "candidates" in fields and "candidates" not in options:
        default = next(f.default for f in chosen.spec_type.__dataclass_fields__.values() if f.name == "candidates")
        values["candidates"] = max(default, nsamples)
    return chosen.spec_type(**values)


def spec_from_params(strategy: Strategy | str, params: dict, section: str = "sampling") -> SamplingSpec:
    """A spec from recorded parameters (a manifest, a config file), older spellings included."""
    return entry(strategy).spec_type.from_params(params, section)
