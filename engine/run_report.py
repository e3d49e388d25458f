"""The HTML report of a run: every figure of what was built, one section per stage.

Shared by ``calibscope run`` and the dashboard's Export tab, so both reports show the same things.
"""
from __future__ import annotations

import pandas as pd

from engine.compare import summarize
from engine.corpus import corpus_summary
from engine.figures import (
    bucket_bars,
    channel_heatmap,
    diagonal_heatmap,
    hessian_depth,
    layer_distributions,
    length_histogram,
    outlier_table,
    ranges_across_depth,
)
from engine.figures.quant import sensitivity_depth
from engine.figures.selection import comparison_bars
from engine.html_report import render, section
from engine.models import ModelInfo
from engine.quant import QuantReport
from engine.sampling import CalibrationSet
from engine.stats import StatsReport
from engine.stats.hessian_report import HessianReport


def calibration_section(calibration: CalibrationSet) -> str:
    prefix = len(calibration.manifest.tokenizer["prefix_ids"])
    edges = tuple(calibration.manifest.params.get("edges", ())) if calibration.buckets is not None else ()
    buckets = calibration.buckets is not None
    return section("Calibration set", notes=calibration.notes,
                   tables=[pd.DataFrame(calibration.summary_rows(), columns=["Calibration set", ""])]
                   + ([calibration.buckets] if buckets else []),
                   figures=[length_histogram(calibration.corpus_lengths, calibration.lengths, edges, prefix)]
                   + ([bucket_bars(calibration.buckets)] if buckets else []))


def run_report(info: ModelInfo, corpus_label: str, corpus, calibration: CalibrationSet, stats: StatsReport | None = None,
               hessians: HessianReport | None = None, quantization: QuantReport | None = None,
               comparison: pd.DataFrame | None = None) -> str:
    """One self-contained HTML page (works offline); ``comparison`` is engine.compare's rows."""
    sections = [
        section("Model and corpus", tables=[pd.DataFrame(info.as_rows(), columns=["Model", ""]),
                                            pd.DataFrame(corpus_summary(corpus), columns=["Corpus", ""])]),
        calibration_section(calibration),
    ]
    if stats is not None:
        sections.append(section("Activation ranges", tables=[outlier_table(stats)],
                                figures=[ranges_across_depth(stats), layer_distributions(stats), channel_heatmap(stats)]))
    if hessians is not None:
        sections.append(section("Hessians", notes=hessians.warnings[:20], figures=[hessian_depth(hessians), diagonal_heatmap(hessians)]))
    if quantization is not None:
        sections.append(section("Quantization", tables=[pd.DataFrame(quantization.summary_rows(), columns=["Quantization", ""])],
                                figures=[sensitivity_depth(quantization)]))
    if comparison is not None and len(comparison):
        table = summarize(comparison)
        figures = [comparison_bars(table, scheme, evaluation, float(part["float_perplexity"].iloc[0]))
                   for (scheme, evaluation), part in comparison.groupby(["scheme", "evaluation"])]
        sections.append(section("Strategy comparison", tables=[table], figures=figures))
    return render("calibscope report", f"{info.name} · {corpus_label}", sections)
