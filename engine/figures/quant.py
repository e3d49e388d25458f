"""Figures of simulated quantization: which layers it hurts, and perplexity and divergence from float per scheme."""
from __future__ import annotations

import itertools

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.figures.stats import short_name
from engine.figures.style import ASKED, CORPUS, SELECTED, log_axis, styled
from engine.quant import ALL_AT_ONCE, QuantReport

METRICS = {  # column -> (legend, colour, dash)
    "output_error": ("weights: relative output error (calibration tokens)", SELECTED, "solid"),
    "output_error_before_awq": ("the same weights rounded without AWQ", "#94a3b8", "dash"),
    "input_error": ("activations: relative input error", ASKED, "dot"),
    "kv_error": ("KV cache: relative error of the cached keys and values (after the layers)", "#f59e0b", "dashdot"),
}


SENSITIVITY_COLUMNS = ("perplexity_change", *METRICS)


def has_sensitivity(report: QuantReport) -> bool:
    """Whether the run measured any per-layer sensitivity (none asked, or nothing to measure it with)."""
    return any(c in report.layers and report.layers[c].notna().any() for c in SENSITIVITY_COLUMNS)


def sensitivity_depth(report: QuantReport) -> go.Figure | None:
    """Per-layer sensitivity in execution order: the cheap measures (log, left axis) and, in the
    thorough mode, the perplexity change with only that layer quantized (bars, right axis). None
    when the run measured none (an empty frame with made-up axes would say nothing)."""
    if not has_sensitivity(report):
        return None
    table = report.layers
    x = [short_name(layer) for layer in table["layer"]]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if "perplexity_change" in table:
        fig.add_trace(go.Bar(x=x, y=table["perplexity_change"].tolist(), name="perplexity change, this layer alone",
                             marker={"color": CORPUS}, opacity=0.6), secondary_y=True)
        fig.update_yaxes(title_text="Δ perplexity", secondary_y=True, showgrid=False)
    for column, (name, colour, dash) in METRICS.items():
        if column in table and table[column].notna().any():
            fig.add_trace(go.Scatter(x=x, y=table[column].tolist(), name=name, mode="lines+markers",
                                     line={"color": colour, "dash": dash}, marker={"size": 5}), secondary_y=False)
    log_axis(fig, percent=True, title_text="relative error (log)", secondary_y=False)
    fig.update_xaxes(tickangle=-60, tickfont={"size": 10})
    styled(fig, f"Per-layer sensitivity: {report.spec.label()}", "layer (block.module, execution order)",
           "relative error (log)")
    return fig.update_layout(height=420, margin={"b": 110}, showlegend=True)  # named even when it is the only trace


def scheme_label(report: QuantReport) -> str:
    """The run's scheme, and how its GPTQ got its Hessians when not all at once (sequential runs)."""
    mode = report.meta.get("gptq", "")
    return report.spec.label() + (f", {mode}" if mode and mode != ALL_AT_ONCE else "")


def run_label(number: int, report: QuantReport) -> str:
    return f"#{number} {scheme_label(report)}"


def wrapped(text: str, width: int = 18) -> str:
    """A tick label broken into lines of about ``width`` characters (long scheme names stay level)."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "<br>".join([*lines, line])


def perplexity_runs(reports: list[QuantReport]) -> go.Figure:
    """Quantized perplexity of each run of this session, one colour per held-out text (runs measured
    on different texts are not comparable with each other), each run's float perplexity as a marker."""
    labels = [wrapped(run_label(number, report)) for number, report in enumerate(reports, 1)]
    fig = go.Figure()
    texts = list(dict.fromkeys((r.meta.get("evaluation", ""), r.meta.get("evaluation_tokens", 0)) for r in reports))
    for colour, (text, tokens) in zip([SELECTED, ASKED, CORPUS, "#f59e0b", "#14b8a6"] * 4, texts):
        mine = [i for i, r in enumerate(reports)
                if (r.meta.get("evaluation", ""), r.meta.get("evaluation_tokens", 0)) == (text, tokens)]
        values = [reports[i].quantized_perplexity for i in mine]
        fig.add_trace(go.Bar(x=[labels[i] for i in mine], y=values, name=f"on {text} ({tokens:,} tokens)",
                             marker={"color": colour}, text=[f"{v:.2f}" for v in values], textposition="outside",
                             hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    floats = [report.float_perplexity for report in reports]
    fig.add_trace(go.Scatter(x=labels, y=floats, name="float (same text)", mode="markers",
                             marker={"color": "#0f172a", "symbol": "line-ew-open", "size": 28, "line": {"width": 3}},
                             hovertemplate="float: %{y:.3f}<extra></extra>"))
    top = max(max(r.quantized_perplexity for r in reports), max(floats))
    fig.update_layout(bargap=0.5 if len(reports) > 2 else 0.7, barmode="overlay", showlegend=True)
    fig.update_yaxes(range=[0, top * 1.18])  # room for the value labels above the bars
    fig.update_xaxes(tickangle=0, categoryorder="array", categoryarray=labels)
    styled(fig, "Perplexity by scheme (held-out text; lower is better)", "scheme", "perplexity")
    return fig.update_layout(height=420, margin={"b": 90})


KLD_FLOOR = 1e-6  # nats: a token below it is drawn at it (a log axis has no zero)
CDF_POINTS = 400


def divergence_runs(reports: list[QuantReport]) -> go.Figure | None:
    """Each run's per-token KL divergence from float as a cumulative share of tokens (log x): where
    most tokens sit, and how heavy the tail a user meets is. None when no run measured it."""
    measured = [(number, report) for number, report in enumerate(reports, 1) if report.divergence is not None]
    if not measured:
        return None
    fig = go.Figure()
    colours = itertools.cycle([SELECTED, ASKED, CORPUS, "#f59e0b", "#14b8a6", "#6366f1", "#ef4444", "#0f172a"])
    for (number, report), colour in zip(measured, colours):
        found = report.divergence
        values = np.sort(np.maximum(found.kld.ravel(), KLD_FLOOR))
        picked = np.unique(np.linspace(0, len(values) - 1, min(CDF_POINTS, len(values))).astype(int))
        share = (picked + 1) / len(values)
        # the legend names the run by its number (the perplexity chart's), the hover says the rest:
        # a scheme's whole label beside its numbers would push the plot out of its frame
        name = f"#{number}: mean {found.mean_kld:.4f}, p99 {found.p99_kld:.3f}, same top {100 * found.top1_agreement:.1f}%"
        about = f"{run_label(number, report)} ({report.meta.get('evaluation', '')})"
        fig.add_trace(go.Scatter(x=values[picked].tolist(), y=share.tolist(), name=name, mode="lines",
                                 line={"color": colour, "width": 2},
                                 hovertemplate="%{y:.1%} of tokens at or below %{x:.2e} nats<extra>" + about + "</extra>"))
    fig.update_xaxes(type="log", exponentformat="power")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    styled(fig, "KL divergence from float, per token (further left is better)", "KL(float ‖ quantized), nats (log)",
           "share of tokens at or below")
    return fig.update_layout(height=400, showlegend=True, legend={"orientation": "h", "y": -0.22, "x": 0, "yanchor": "top"},
                             margin={"b": 100})


def mixed_allocation(report: QuantReport) -> go.Figure | None:
    """A mixed-precision run's width per layer over depth: a row per layer kind, a column per block,
    the colour and the number the bits (None for a run of one width)."""
    table = report.layers
    if "bits" not in table or table["bits"].isna().all():
        return None
    rows = table.dropna(subset=["bits"]).assign(module=lambda t: t["layer"].str.rsplit(".", n=1).str[-1])
    kinds = list(dict.fromkeys(rows["module"]))  # execution order within a block
    blocks = sorted(rows["block"].unique())
    grid = rows.pivot_table(index="module", columns="block", values="bits", aggfunc="first").reindex(index=kinds, columns=blocks)
    widths = sorted(rows["bits"].unique())
    labels = [[f"{v:.0f}" if np.isfinite(v) else "" for v in row] for row in grid.values]
    fig = go.Figure(go.Heatmap(z=grid.values.tolist(), x=[str(b) for b in blocks], y=kinds, zmin=min(widths), zmax=max(widths),
                               colorscale=[[0, "#fde68a"], [0.5, "#60a5fa"], [1, "#1e3a8a"]], text=labels, texttemplate="%{text}",
                               colorbar={"title": "bits", "tickvals": widths, "thickness": 12},
                               hovertemplate="block %{x} %{y}: %{z} bits<extra></extra>"))
    average = report.meta.get("average_bits")
    said = f" (average {average:.3f} bits/weight with scales)" if average is not None else ""
    styled(fig, f"Bits per layer{said}", "block", "layer")
    fig.update_yaxes(autorange="reversed")
    return fig.update_layout(height=max(260, 60 + 34 * len(kinds)))
