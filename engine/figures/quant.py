"""Figures of simulated quantization: which layers it hurts, and perplexity per scheme."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.figures.stats import short_name
from engine.figures.style import ASKED, CORPUS, SELECTED, styled
from engine.quant import QuantReport

METRICS = {  # column -> (legend, colour, dash)
    "output_error": ("weights: relative output error (calibration tokens)", SELECTED, "solid"),
    "input_error": ("activations: relative input error", ASKED, "dot"),
}


def sensitivity_depth(report: QuantReport) -> go.Figure:
    """Per-layer sensitivity in execution order: the cheap measures (log, left axis) and, in the
    thorough mode, the perplexity change with only that layer quantized (bars, right axis)."""
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
    fig.update_yaxes(type="log", dtick=1, tickformat=".2~%", title_text="relative error (log)", secondary_y=False)
    fig.update_xaxes(tickangle=-60, tickfont={"size": 10})
    styled(fig, f"Per-layer sensitivity: {report.spec.label()}", "layer (block.module, execution order)",
           "relative error (log)")
    return fig.update_layout(height=420, margin={"b": 110})


def run_label(number: int, report: QuantReport) -> str:
    return f"#{number} {report.spec.label()}"


def perplexity_runs(reports: list[QuantReport]) -> go.Figure:
    """Quantized perplexity of each run of this session, float as a marker."""
    labels = [run_label(number, report) for number, report in enumerate(reports, 1)]
    quantized = [report.quantized_perplexity for report in reports]
    floats = [report.float_perplexity for report in reports]
    fig = go.Figure(go.Bar(x=labels, y=quantized, name="quantized", marker={"color": SELECTED},
                           text=[f"{value:.2f}" for value in quantized], textposition="outside",
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=labels, y=floats, name="float", mode="markers",
                             marker={"color": "#0f172a", "symbol": "line-ew-open", "size": 28, "line": {"width": 3}},
                             hovertemplate="float: %{y:.3f}<extra></extra>"))
    top = max(max(quantized), max(floats))
    fig.update_layout(bargap=0.5 if len(reports) > 2 else 0.7)
    fig.update_yaxes(range=[0, top * 1.15])  # room for the value labels above the bars
    return styled(fig, "Perplexity by scheme (held-out text; lower is better)", "scheme", "perplexity")
