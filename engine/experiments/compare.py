"""The comparison experiment: does the choice of calibration samples change the quantized model?

For every strategy x seed x sample count: build the set (same corpus, same length), collect what
the schemes need (Hessians for GPTQ, statistics for static activations), quantize, and measure
perplexity and the divergence from float on each held-out evaluation set. Means and spreads over seeds answer "is cluster
selection better than random?" for this model and data, with error bars.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from engine.errors import SpecError
from engine.models import LoadedModel
from engine.progress import Progress, no_progress, scaled
from engine.quant import (
    PRESETS,
    Calibrated,
    EvaluationSet,
    FloatReference,
    Quantization,
    Sensitivity,
    divergence,
    float_reference,
    quantize,
    quantized,
)
from engine.sampling import Strategy, build, entry, spec_for
from engine.stats import Diagnostics, HessianSpec, StatsSpec, collect, collect_hessians

# Windows and packed blocks are recipes for a length, not selections among documents.
COMPARED = (Strategy.RANDOM, Strategy.LENGTH_STRATIFIED, Strategy.EMBEDDING_CLUSTERS, Strategy.ACTIVATION_CLUSTERS,
            Strategy.COVERAGE, Strategy.SELF_GENERATED)


@dataclass(frozen=True)
class ComparisonSpec:
    """strategies x seeds (0..seeds-1) x counts, each set of ``length``-token samples, quantized
    with each of ``schemes`` (names of engine.quant.PRESETS)."""

    strategies: tuple[str, ...] = tuple(s.value for s in COMPARED)
    seeds: int = 5
    counts: tuple[int, ...] = (8, 32, 128)
    length: int = 256
    schemes: tuple[str, ...] = ("W4 g128 GPTQ", "W8A8 static (p99.99)")

    def __post_init__(self) -> None:
        for name in self.strategies:
            if name not in {s.value for s in COMPARED}:
                raise SpecError(f"strategy {name!r} cannot be compared; use {', '.join(s.value for s in COMPARED)}.")
        unknown = [s for s in self.schemes if s not in PRESETS]
        if unknown:
            raise SpecError(f"schemes {unknown} are unknown; use {', '.join(PRESETS)}.")
        if self.seeds < 1 or not self.counts or min(self.counts) < 1 or self.length < 2:
            raise SpecError("Use at least one seed, positive sample counts and a length of at least 2 tokens.")

    @property
    def runs(self) -> int:
        return len(self.strategies) * self.seeds * len(self.counts)


CANDIDATES_PER_SAMPLE, MIN_CANDIDATES = 16, 128


def candidates(strategy: str, samples: int) -> dict:
    """Cluster selection embeds its candidates (a sentence encoder's or the model's forward per
    document): in a comparison, 16 per sample (at least 128) keep each cell to seconds on a CPU.
    Coverage keeps its own pool (256, or the samples if more): one scoring pass per seed, shared by
    every sample count (the pool depends on the seed only)."""
    if "embed_tokens" not in entry(strategy).spec_type.field_names():  # not a cluster strategy
        return {}
    return {"candidates": max(CANDIDATES_PER_SAMPLE * samples, MIN_CANDIDATES), "embed_tokens": 128}


def _measure(loaded: LoadedModel, calibration, schemes: tuple[str, ...], evaluations: list[EvaluationSet],
             references: dict[str, FloatReference]) -> list[dict]:
    needs_stats = any(PRESETS[s].needs_stats for s in schemes)
    needs_hessians = any(PRESETS[s].needs_hessians for s in schemes)
    stats = collect(loaded, calibration, StatsSpec(channel_histograms=False)) if needs_stats else None
    hessians = collect_hessians(loaded, calibration, HessianSpec(diagnostics=Diagnostics.NONE)) if needs_hessians else None
    rows = []
    for scheme in schemes:
        spec = PRESETS[scheme]
        plan, table = quantize(loaded, Quantization(spec, sensitivity=Sensitivity.NONE),
                               Calibrated(calibration, stats, hessians))
        # AWQ: the median power its search chose over the set's inputs (how its scales move with the set)
        awq = {"awq_ratio": float(table["awq_ratio"].median())} if "awq_ratio" in table else {}
        with quantized(loaded, plan):
            for evaluation in evaluations:
                reference = references[evaluation.name]
                found = divergence(loaded, evaluation, reference)
                rows.append({"scheme": scheme, "evaluation": evaluation.name, "perplexity": found.perplexity,
                             "float_perplexity": reference.perplexity, "gap": found.perplexity - reference.perplexity,
                             **found.summary(), **awq})
    return rows


def compare(loaded: LoadedModel, corpus, spec: ComparisonSpec, evaluations: list[EvaluationSet], corpus_label: str = "",
            progress: Progress = no_progress,
            reference: Callable[[EvaluationSet], FloatReference] | None = None) -> pd.DataFrame:
    """One row per (strategy, seed, samples, scheme, evaluation) with perplexity, gap and divergence
    from float, and for AWQ schemes the median power its search chose (``reference``: where the
    float model's are already known, e.g. a session's cache)."""
    measure = reference or (lambda evaluation: float_reference(loaded, evaluation))
    references = {e.name: measure(e) for e in evaluations}
    rows, done = [], 0
    for strategy in spec.strategies:
        for samples in spec.counts:
            for seed in range(spec.seeds):
                started = time.perf_counter()
                report = scaled(progress, done / spec.runs, (done + 1) / spec.runs)
                report(0.0, f"{strategy}, {samples} samples, seed {seed} ({done + 1} of {spec.runs})")
                sampling = spec_for(strategy, nsamples=samples, length=spec.length, seed=seed, **candidates(strategy, samples))
                calibration = build(corpus, loaded.tokenizer, sampling,
                                    max_positions=loaded.info.max_positions, corpus_label=corpus_label, model=loaded)
                for row in _measure(loaded, calibration, spec.schemes, evaluations, references):
                    rows.append({"strategy": strategy, "seed": seed, "samples": samples, "calibration": corpus_label,
                                 "tokens": int(calibration.lengths.sum()), **row,
                                 "seconds": round(time.perf_counter() - started, 1)})
                done += 1
                report(1.0, f"{strategy}, {samples} samples, seed {seed} done")
    return pd.DataFrame(rows)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std of perplexity over seeds per (calibration, evaluation, scheme, samples, strategy),
    and of the mean KL divergence from float where it was measured; std is NaN where one seed gives
    no spread."""
    keys = ["calibration", "evaluation", "scheme", "samples", "strategy"]
    grouped = rows.groupby(keys)
    table = grouped["perplexity"].agg(["mean", "std", "count"]).reset_index()  # std is NaN for one seed: not zero
    if "kld_mean" in rows:
        divergences = grouped["kld_mean"].agg(["mean", "std"]).reset_index(drop=True)
        table["kld"], table["kld_std"] = divergences["mean"], divergences["std"]
        table["top1"] = grouped["top1_agreement"].mean().reset_index(drop=True)
    best = table.groupby(keys[:-1])["mean"].transform("min")
    table["best"] = table["mean"] == best
    return table.sort_values(keys).reset_index(drop=True)
