"""Figures of GPTQ Hessians: trace and conditioning across depth, a layer's spectrum, the diagonals."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.figures.stats import short_name
from engine.figures.style import ASKED, SELECTED, log_axis, log_channel_grid, styled
from engine.stats import HessianReport


def _distinct(report: HessianReport):
    return report.diagnostics[report.diagnostics["shared_with"] == ""].reset_index(drop=True)


def hessian_depth(report: HessianReport) -> go.Figure:
    """Trace (input energy) and condition number per distinct input, in execution order (log axes)."""
    rows = _distinct(report)
    x = [short_name(layer) for layer in rows["layer"]]
    finite = rows["condition_number"].replace(np.inf, np.nan)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=x, y=rows["trace"].tolist(), name="trace", mode="lines+markers",
                             line={"color": SELECTED}), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=finite.tolist(), name="condition number", mode="lines+markers",
                             line={"color": ASKED, "dash": "dot"}), secondary_y=True)
    deficient = rows[rows["rank"] < rows["channels"]]
    if len(deficient):
        fig.add_trace(go.Scatter(x=[short_name(layer) for layer in deficient["layer"]], y=deficient["trace"].tolist(),
                                 mode="markers", name="rank-deficient", marker={"color": "#ef4444", "size": 11, "symbol": "x"}),
                      secondary_y=False)
    log_axis(fig, title_text="trace of H (log)", secondary_y=False)
    log_axis(fig, title_text="condition number (log)", secondary_y=True, showgrid=False)
    fig.update_xaxes(tickangle=-60, tickfont={"size": 10})
    styled(fig, "Hessians across depth: trace and condition number", "layer (block.module)", "trace of H (log)")
    return fig.update_layout(height=420, margin={"b": 110})


def eigen_spectrum(report: HessianReport, layer: str) -> go.Figure:
    """Eigenvalues of one layer's Hessian, largest first, relative to the largest (log scale)."""
    source = report.shared_with.get(layer, layer)
    values = report.eigenvalues[source].numpy()
    relative = np.clip(values / values[0], 1e-18, None) if values[0] > 0 else values
    row = report.diagnostics.set_index("layer").loc[layer]
    fig = go.Figure(go.Scatter(x=list(range(1, len(values) + 1)), y=relative.tolist(), mode="lines",
                               line={"color": SELECTED}, name="λ / λmax",
                               hovertemplate="eigenvalue %{x}: %{y:.3g} of the largest<extra></extra>"))
    fig.add_vline(x=int(row["rank"]), line={"color": "#ef4444", "dash": "dash", "width": 1})
    log_axis(fig)
    return styled(fig, f"Eigen-spectrum of {short_name(layer)} (rank {int(row['rank'])} of {int(row['channels'])})",
                  "eigenvalue index (largest first)", "λ / λmax (log scale)")


def diagonal_heatmap(report: HessianReport, max_columns: int | None = None) -> go.Figure:
    """diag(H) per input channel (the energy each channel brings), layers as rows, log10 colour;
    with ``max_columns``, runs of channels pooled by their maximum (the report's overview)."""
    rows = _distinct(report)
    diagonals = [np.diagonal(report.hessians[layer].double().cpu().numpy()) for layer in rows["layer"]]
    grid, channels = log_channel_grid(diagonals, 1e-12, max_columns)
    pooled = len(channels) > 1 and channels[1] - channels[0] > 1
    fig = go.Figure(go.Heatmap(z=grid, y=[short_name(layer) for layer in rows["layer"]], x=channels,
                               colorscale="Magma", colorbar={"title": {"text": "log10 H_ii"}},
                               hovertemplate="%{y} channel %{x}" + ("+" if pooled else "")
                               + "<br>log10 H_ii %{z:.2f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont={"size": 9})
    step = f" (max over each {channels[1] - channels[0]} channels)" if pooled else ""
    styled(fig, f"Hessian diagonals (input-channel energy){step}", "input channel", "layer")
    return fig.update_layout(height=max(380, 14 * len(rows) + 120))