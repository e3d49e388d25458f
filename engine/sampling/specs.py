"""Sampling specs: one frozen, validated dataclass per strategy.

Every spec has ``length``: the longest sample it produces, in tokens as the model sees them
(including the BOS token that ``add_bos`` prepends where the tokenizer adds one at inference).
Windowed strategies produce exactly ``length`` tokens; the others truncate to it; a
length-stratified set's length is its last bucket edge. ``seed`` makes every strategy reproducible.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from enum import Enum
from typing import ClassVar

from engine.errors import SpecError
from engine.specs import choice

DEFAULT_EDGES = (64, 128, 256, 512, 1024, 2048)
# Documents shorter than this many tokens are not drawn as samples, by every strategy and entry point
# (dashboard, run configs, API): a sample of 4 tokens calibrates nothing (GPTQModel drops samples
# under 10 tokens). A sample length below it lowers it to the length.
MIN_TOKENS = 16
MAX_SAMPLES = 100_000
# Earlier releases spelled a sample's length three ways; manifests and configs that use the old
# names still load (``SamplingSpec.from_params``).
LEGACY_LENGTH_NAMES = ("max_length", "seqlen")


class Strategy(str, Enum):
    """Sampling strategies; the values are the labels the UI shows and manifests record. The
    declared order is the order they are listed and compared in (random first: the baseline)."""

    RANDOM = "random"
    LENGTH_STRATIFIED = "length-stratified"
    GPTQ_WINDOWS = "gptq-windows"
    PACKED = "packed"
    EMBEDDING_CLUSTERS = "embedding-clusters"
    ACTIVATION_CLUSTERS = "activation-clusters"
    SELF_GENERATED = "self-generated"
    LLAMA_CHUNKS = "llama-chunks"
    COVERAGE = "coverage"
    SUPPLIED = "supplied"


class Recipe(str, Enum):
    """Whose GPTQ-windows recipe: calibscope's (numpy RNG, every window start reachable, BOS as at
    inference) or a published one reproduced bit for bit from the same rows, tokenizer and seed
    (Python's ``random``, their joins, their off-by-one and their quirks)."""

    CALIBSCOPE = "calibscope"
    GPTQ_WIKITEXT2 = "gptq-reference wikitext2"
    GPTQ_PTB = "gptq-reference ptb"
    GPTQ_C4 = "gptq-reference c4"
    OPTIMUM_WIKITEXT2 = "optimum wikitext2"
    OPTIMUM_PTB = "optimum ptb"
    OPTIMUM_C4 = "optimum c4"
    OPTIMUM_C4_NEW = "optimum c4-new"


class Allocation(str, Enum):
    EQUAL = "equal"
    PROPORTIONAL = "proportional"


class WindowMode(str, Enum):
    """GPTQ's two recipes: wikitext2 (joined corpus, random offsets) and c4 (document rejection)."""

    JOINED = "joined"
    DOCUMENTS = "documents"


def _check_positive(name: str, value: int, upper: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(f"{name}={value!r} must be a positive whole number.")
    if upper is not None and value > upper:
        raise SpecError(f"{name}={value:,} is more than the {upper:,} calibscope handles; use fewer.")


@dataclass(frozen=True)
class SamplingSpec:
    """Fields every strategy shares.

    nsamples: how many calibration sequences to return.
    add_bos: start every sequence the way an inference sequence starts (BOS where the tokenizer
    adds it); False reproduces recipes that cut raw token windows.
    chat_template: render chat ``messages`` with the tokenizer's chat template when it has one.
    """

    nsamples: int = 128
    seed: int = 0
    add_bos: bool = True
    chat_template: bool = True

    strategy: ClassVar[Strategy]
    # ``length`` is each strategy's own: a field, or (length-stratified) the last edge.

    def __post_init__(self) -> None:
        _check_positive("nsamples", self.nsamples, MAX_SAMPLES)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise SpecError(f"seed={self.seed!r} must be a whole number >= 0.")
        if "length" in self.field_names():
            _check_positive("length", self.length)
        if "min_tokens" in self.field_names():
            if self.min_tokens is None:
                object.__setattr__(self, "min_tokens", min(MIN_TOKENS, self.length))
            _check_positive("min_tokens", self.min_tokens)
            if self.min_tokens > self.length:
                raise SpecError(f"min_tokens={self.min_tokens} is above the sample length {self.length}.")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def with_length(self, length: int) -> SamplingSpec:
        """A copy whose longest sample is ``length`` tokens (used to clamp to the model's maximum)."""
        changes = {"length": length}
        if "min_tokens" in self.field_names():
            changes["min_tokens"] = min(self.min_tokens, length)
        return replace(self, **changes)

    @classmethod
    def from_params(cls, params: dict, section: str = "sampling") -> SamplingSpec:
        """The spec from recorded or configured parameters, old spellings of the length included;
        a SpecError names unknown keys."""
        params = dict(params)
        for legacy in LEGACY_LENGTH_NAMES:
            if legacy in params and "length" in cls.field_names():
                params.setdefault("length", params.pop(legacy))
        unknown = sorted(set(params) - set(cls.field_names()))
        if unknown:
            raise SpecError(f"[{section}] has keys {unknown} that the {cls.strategy.value} strategy does not take; "
                            f"it takes {', '.join(cls.field_names())}.")
        return cls(**params)


@dataclass(frozen=True)
class RandomSpec(SamplingSpec):
    """Whole documents drawn without replacement, truncated to ``length`` tokens; documents of
    fewer than ``min_tokens`` tokens are not drawn."""

    length: int = 2048
    min_tokens: int | None = None  # None: MIN_TOKENS (or the length, if shorter)
    strategy = Strategy.RANDOM


@dataclass(frozen=True)
class LengthStratifiedSpec(SamplingSpec):
    """Documents drawn per length bucket ``(edges[i-1], edges[i]]`` tokens.

    allocation: ``equal`` (nsamples // buckets each, the seed design) or ``proportional`` to what
    each bucket holds. A bucket with too few documents passes its shortfall to the others.
    Documents longer than the last edge are cut into windows of that length, not dropped;
    documents of fewer than ``min_tokens`` tokens are not drawn.
    """

    edges: tuple[int, ...] = DEFAULT_EDGES
    allocation: Allocation = Allocation.EQUAL
    min_tokens: int | None = None  # None: MIN_TOKENS (or the length, if shorter)
    strategy = Strategy.LENGTH_STRATIFIED

    def __post_init__(self) -> None:
        object.__setattr__(self, "edges", tuple(int(e) for e in self.edges))
        if not self.edges or any(e < 1 for e in self.edges) or list(self.edges) != sorted(set(self.edges)):
            raise SpecError(f"edges={self.edges} must be positive token counts in increasing order, e.g. {DEFAULT_EDGES}.")
        object.__setattr__(self, "allocation", choice(Allocation, self.allocation, "allocation"))
        super().__post_init__()

    @property
    def length(self) -> int:
        return self.edges[-1]

    def with_length(self, length: int) -> LengthStratifiedSpec:
        edges = tuple(e for e in self.edges if e < length) + (length,)
        return replace(self, edges=edges, min_tokens=min(self.min_tokens, length))


@dataclass(frozen=True)
class GptqWindowsSpec(SamplingSpec):
    """Random windows of exactly ``length`` tokens, GPTQ's reference recipe (128 x 2048, seed 0).

    mode ``joined``: the corpus joined with ``separator`` and tokenized once, windows at random
    offsets (the wikitext2 recipe). mode ``documents``: random documents until one has at least
    ``length`` tokens, then a random window in it (the c4 recipe); at most ``max_attempts`` draws.
    ``recipe``: another tool's recipe reproduced exactly (it decides the join, the mode and the
    windows' start; ``mode``, ``separator`` and ``add_bos`` are then not used).
    """

    length: int = 2048
    mode: WindowMode = WindowMode.JOINED
    separator: str = "\n\n"
    max_attempts: int = 100_000
    recipe: Recipe = Recipe.CALIBSCOPE
    strategy = Strategy.GPTQ_WINDOWS

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive("max_attempts", self.max_attempts)
        object.__setattr__(self, "mode", choice(WindowMode, self.mode, "mode"))
        object.__setattr__(self, "recipe", choice(Recipe, self.recipe, "recipe"))
        if self.length < 2:
            raise SpecError("A window needs at least 2 tokens.")


@dataclass(frozen=True)
class PackedSpec(SamplingSpec):
    """Documents in random order concatenated (EOS between them) and cut into blocks of exactly
    ``length`` tokens (AWQ style)."""

    length: int = 2048
    strategy = Strategy.PACKED

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length < 2:
            raise SpecError("A packed block needs at least 2 tokens.")


@dataclass(frozen=True)
class LlamaChunksSpec(SamplingSpec):
    """llama.cpp's chunks (llama-imatrix, llama-perplexity): the corpus joined with ``separator``
    and tokenized once with BOS in front, cut into consecutive chunks of ``length`` tokens, the
    first token of each replaced by BOS; the first ``nsamples`` chunks, in order (the seed is unused)."""

    length: int = 512
    separator: str = "\n\n"
    strategy = Strategy.LLAMA_CHUNKS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length < 2:
            raise SpecError("A chunk needs at least 2 tokens.")


@dataclass(frozen=True)
class SuppliedSpec(SamplingSpec):
    """Token windows made elsewhere (another tool, a paper's release), loaded as they are from
    ``path``: at most ``nsamples`` of them, none longer than ``length``. Not built from a corpus."""

    nsamples: int = MAX_SAMPLES
    length: int = 1 << 20
    path: str = ""
    strategy = Strategy.SUPPLIED


@dataclass(frozen=True)
class ClusterSpec(SamplingSpec):
    """Diversity by clustering: embed up to ``candidates`` documents (a seeded random subset of
    those with at least ``min_tokens`` tokens), k-means into ``clusters`` groups (0: one per
    sample), and take the documents nearest each centroid; with fewer clusters than samples each
    cluster gets samples in proportion to its size. Documents are truncated to ``length``."""

    length: int = 512
    min_tokens: int | None = None  # None: MIN_TOKENS (or the length, if shorter)
    clusters: int = 0
    candidates: int = 2000
    embed_tokens: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive("candidates", self.candidates)
        _check_positive("embed_tokens", self.embed_tokens)
        if self.clusters < 0 or self.clusters > self.nsamples:
            raise SpecError(f"clusters={self.clusters} must be between 0 (one per sample) and nsamples={self.nsamples}.")
        if self.candidates < self.nsamples:
            raise SpecError(f"candidates={self.candidates} must be at least nsamples={self.nsamples}.")

    @property
    def k(self) -> int:
        return self.clusters or self.nsamples


@dataclass(frozen=True)
class EmbeddingClustersSpec(ClusterSpec):
    """Clusters of sentence embeddings (all-MiniLM-L6-v2, mean-pooled, shipped offline in a wheel)."""

    strategy = Strategy.EMBEDDING_CLUSTERS


@dataclass(frozen=True)
class ActivationClustersSpec(ClusterSpec):
    """Clusters of the target model's own hidden states after block ``layer`` (-1: the middle
    block), mean-pooled over the text tokens: diversity in the space the quantizer sees. Costs one
    forward (up to that block) per candidate, so fewer candidates by default."""

    candidates: int = 256
    embed_tokens: int = 128
    layer: int = -1
    strategy = Strategy.ACTIVATION_CLUSTERS


@dataclass(frozen=True)
class CoverageSpec(SamplingSpec):
    """Greedy weighted set cover of the outlier channels (and experts) of ``candidates`` documents
    scored by the target model: a channel is an outlier when its max |x| over the candidates exceeds
    ``outlier_ratio`` times its input's median channel max; a document covers it when its own max
    reaches ``fraction`` of that. Documents are truncated to ``length``."""

    length: int = 512
    min_tokens: int | None = None  # None: MIN_TOKENS (or the length, if shorter)
    candidates: int = 256
    fraction: float = 0.9
    outlier_ratio: float = 6.0
    strategy = Strategy.COVERAGE

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive("candidates", self.candidates)
        if self.candidates < self.nsamples:
            raise SpecError(f"candidates={self.candidates} must be at least nsamples={self.nsamples}.")
        if not 0 < self.fraction <= 1 or self.outlier_ratio <= 1:
            raise SpecError(f"fraction={self.fraction} must be in (0, 1] and outlier_ratio={self.outlier_ratio} above 1.")


@dataclass(frozen=True)
class SelfGeneratedSpec(SamplingSpec):
    """Text sampled from the target model itself, for users without data: from BOS (or each of
    ``prompts`` in turn), ``length`` tokens, temperature falling linearly from
    ``temperature_start`` to ``temperature_end`` (diverse openings, coherent continuations), top-k."""

    length: int = 512
    temperature_start: float = 1.5
    temperature_end: float = 0.8
    top_k: int = 50
    prompts: tuple[str, ...] = ()
    batch_size: int = 16
    strategy = Strategy.SELF_GENERATED

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "prompts", tuple(self.prompts))
        _check_positive("top_k", self.top_k)
        _check_positive("batch_size", self.batch_size)
        if not (0 < self.temperature_end and 0 < self.temperature_start):
            raise SpecError("Temperatures must be positive (e.g. 1.5 falling to 0.8).")
