"""The HTML report of a run: every figure of what was built, one section per stage.

Shared by ``calibscope run`` and the dashboard's Export tab, so both reports show the same things.
"""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from engine.corpus import corpus_summary
from engine.experiments import summarize
from engine.figures import (
    bucket_bars,
    channel_heatmap,
    comparison_bars,
    diagonal_heatmap,
    divergence_runs,
    hessian_depth,
    layer_distributions,
    length_histogram,
    outlier_table,
    perplexity_runs,
    ranges_across_depth,
    run_label,
    sensitivity_depth,
    short_name,
)
from engine.html_report import Section, render, section
from engine.models import ModelInfo
from engine.quant import QuantReport
from engine.sampling import CalibrationSet
from engine.stats import HESSIAN_FINDINGS, NO_HESSIAN_FINDING, HessianReport, StatsReport

# The report's heatmaps pool channels to this many columns (max per run): the dashboard has every channel.
REPORT_COLUMNS = 256


def calibration_section(calibration: CalibrationSet) -> Section:
    prefix = len(calibration.manifest.tokenizer["prefix_ids"])
    edges = tuple(calibration.manifest.params.get("edges", ())) if calibration.buckets is not None else ()
    buckets = calibration.buckets is not None
    return section("Calibration set", notes=calibration.notes,
                   tables=[pd.DataFrame(calibration.summary_rows(), columns=["Calibration set", ""])]
                   + ([calibration.buckets] if buckets else []),
                   figures=[length_histogram(calibration.corpus_lengths, calibration.lengths, edges, prefix)]
                   + ([bucket_bars(calibration.buckets)] if buckets else []))


def quantization_section(reports: Sequence[QuantReport]) -> Section:
    """Every run side by side (scheme, held-out text, perplexities, divergence from float), and each run's per-layer view."""
    runs = pd.DataFrame([{"run": run_label(number, report), "evaluated on": report.meta["evaluation"],
                          "tokens": report.meta["evaluation_tokens"], "float": round(report.float_perplexity, 3),
                          "quantized": round(report.quantized_perplexity, 3), "gap": round(report.gap, 3),
                          **{key: round(value, 5) for key, value in report.divergence_columns().items()}}
                         for number, report in enumerate(reports, 1)])
    return section("Quantization", tables=[runs],
                   figures=[perplexity_runs(list(reports)), divergence_runs(list(reports)),
                            *[sensitivity_depth(report) for report in reports]])


def hessian_section(hessians: HessianReport) -> Section:
    """Findings folded into one table (kind, how many inputs, which), not a sentence per layer."""
    rows = [{"finding": f"inputs that {HESSIAN_FINDINGS[kind]}", "inputs": len(layers),
             "layers": ", ".join(short_name(layer) for layer in layers)}
            for kind, layers in hessians.findings().items() if layers]
    table = pd.DataFrame(rows or [{"finding": NO_HESSIAN_FINDING, "inputs": 0,
                                   "layers": ""}])
    return section("Hessians", tables=[table], figures=[hessian_depth(hessians), diagonal_heatmap(hessians, REPORT_COLUMNS)])


def run_report(info: ModelInfo, corpus_label: str, corpus, calibration: CalibrationSet, stats: StatsReport | None = None,
               hessians: HessianReport | None = None, quantizations: Sequence[QuantReport] = (),
               comparison: pd.DataFrame | None = None) -> str:
    """One self-contained HTML page (works offline): every quantization run given, in order;
    ``comparison`` is the comparison experiment's rows."""
    sections = [
        section("Model and corpus", tables=[pd.DataFrame(info.as_rows(), columns=["Model", ""]),
                                            pd.DataFrame(corpus_summary(corpus), columns=["Corpus", ""])]),
        calibration_section(calibration),
    ]
    if stats is not None:
        sections.append(section("Activation ranges", tables=[outlier_table(stats)],
                                figures=[ranges_across_depth(stats), layer_distributions(stats),
                                         channel_heatmap(stats, REPORT_COLUMNS)]))
    if hessians is not None:
        sections.append(hessian_section(hessians))
    if quantizations:
        sections.append(quantization_section(quantizations))
    if comparison is not None and len(comparison):
        table = summarize(comparison)
        figures = [comparison_bars(table, scheme, evaluation, float(part["float_perplexity"].iloc[0]))
                   for (scheme, evaluation), part in comparison.groupby(["scheme", "evaluation"])]
        sections.append(section("Strategy comparison", tables=[table], figures=figures))
    return render("calibscope report", f"{info.name} · {corpus_label}", sections)
