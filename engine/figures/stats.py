"""Figures of activation statistics: ranges across depth, a layers x channels heatmap, per-layer
distributions and one layer's channels."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import torch

from engine.figures.style import CORPUS, EDGE, SELECTED, log_axis, log_channel_grid, styled
from engine.stats import TENSOR_BINS, StatsReport, percentile_column, percentiles_from_counts

PERCENTILE_COLOURS = ("#0ea5e9", "#14b8a6", "#f59e0b", "#ef4444")
BOX_QUANTILES = (0.25, 0.5, 0.75, 0.999)


def threshold_line(x: list, threshold: float) -> go.Scatter:
    """The outlier threshold as a named dashed line: right on log and linear axes alike (an
    annotation on a log axis is placed in log10 units and would stretch the axis)."""
    return go.Scatter(x=[x[0], x[-1]] if x else [], y=[threshold, threshold], name=f"outlier threshold {threshold:g}",
                      mode="lines", line={"color": "#ef4444", "dash": "dash", "width": 1}, hoverinfo="skip")


def short_name(key: str) -> str:
    """model.layers.3.self_attn.q_proj -> 3.q_proj (the block and the module)."""
    parts = key.replace(":output", "").split(".")
    block = next((p for p in parts if p.isdigit()), "")
    suffix = parts[-1] + (" out" if key.endswith(":output") else "")
    return f"{block}.{suffix}" if block else suffix


def _distinct(report: StatsReport) -> pd.DataFrame:
    """Rows of tensors with their own statistics (layers sharing an input appear once)."""
    return report.summary[report.summary["shared_with"] == ""].reset_index(drop=True)


def ranges_across_depth(report: StatsReport) -> go.Figure:
    """Per layer: max, min, |max| and the percentiles of |x|, with a linear / log toggle."""
    rows = _distinct(report)
    x = [short_name(k) for k in rows["key"]]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=rows["absmax"].tolist(), name="|max|", mode="lines+markers",
                             line={"color": SELECTED, "width": 2.5}, customdata=rows["key"].tolist(),
                             hovertemplate="%{customdata}<br>|max| %{y:.4g}<extra></extra>"))
    for colour, percent in zip(PERCENTILE_COLOURS, report.spec.percentiles):
        column = percentile_column(percent)
        fig.add_trace(go.Scatter(x=x, y=rows[column].tolist(), name=f"p{percent:g} |x|", mode="lines",
                                 line={"color": colour, "width": 1.5}, customdata=rows["key"].tolist(),
                                 hovertemplate="%{customdata}<br>" + column + " %{y:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=rows["max"].tolist(), name="max", mode="lines", line={"color": CORPUS, "dash": "dot"},
                             visible="legendonly"))
    fig.add_trace(go.Scatter(x=x, y=rows["min"].tolist(), name="min", mode="lines", line={"color": EDGE, "dash": "dot"},
                             visible="legendonly"))
    fig.add_trace(threshold_line(x, report.spec.outlier_threshold))
    fig.update_layout(updatemenus=[{
        "type": "buttons", "direction": "right", "x": 0.5, "y": 1.24, "xanchor": "left", "showactive": True,
        "buttons": [{"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]},
                    {"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]}],
    }])
    log_axis(fig)
    fig.update_xaxes(tickangle=-60, tickfont={"size": 10})
    styled(fig, "Activation ranges across depth", "layer (block.module, execution order)", "|activation| (log scale)")
    return fig.update_layout(height=440, margin={"t": 90, "b": 110})


def channel_heatmap(report: StatsReport, max_columns: int | None = None) -> go.Figure:
    """|max| of every channel of every distinct input (rows: layers; colour: log10 |max|); with
    ``max_columns``, runs of channels pooled by their maximum (the report's overview)."""
    rows = _distinct(report)
    grid, channels = log_channel_grid([report.channels[key]["absmax"].numpy() for key in rows["key"]], 1e-6, max_columns)
    pooled = len(channels) > 1 and channels[1] - channels[0] > 1
    fig = go.Figure(go.Heatmap(
        z=grid, y=[short_name(k) for k in rows["key"]], x=channels, colorscale="Viridis",
        colorbar={"title": {"text": "log10 |max|"}},
        hovertemplate="%{y} channel %{x}" + ("+" if pooled else "") + "<br>log10 |max| %{z:.2f}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", tickfont={"size": 9})
    step = f" (max over each {channels[1] - channels[0]} channels)" if pooled else ""
    styled(fig, f"Per-channel |max| (layers x channels){step}", "channel", "layer")
    return fig.update_layout(height=max(380, 14 * len(rows) + 120))


def layer_distributions(report: StatsReport) -> go.Figure:
    """A box per layer from its |x| histogram: quartiles, p99.9 whisker, and the exact max."""
    rows = _distinct(report)
    fig = go.Figure()
    quantiles = torch.tensor(BOX_QUANTILES, dtype=torch.float64, device="cpu")
    for key, absmax in zip(rows["key"], rows["absmax"]):
        q1, median, q3, upper = percentiles_from_counts(report.channels[key]["tensor_counts"], TENSOR_BINS, quantiles,
                                                         torch.tensor(absmax, device="cpu")).tolist()
        fig.add_trace(go.Box(name=short_name(key), q1=[q1], median=[median], q3=[q3], lowerfence=[0.0], upperfence=[upper],
                             marker_color=SELECTED, showlegend=False, hoverinfo="y+name"))
        fig.add_trace(go.Scatter(x=[short_name(key)], y=[absmax], mode="markers", marker={"symbol": "x", "color": "#ef4444"},
                                 showlegend=False, hovertemplate="%{x}<br>max |x| %{y:.4g}<extra></extra>"))
    log_axis(fig)
    fig.update_xaxes(tickangle=-60, tickfont={"size": 10})
    styled(fig, "Distribution of |x| per layer (box: quartiles to p99.9; x: max)", "layer", "|activation| (log scale)")
    return fig.update_layout(height=420, margin={"b": 110})


def layer_channels(report: StatsReport, key: str) -> go.Figure:
    """One layer's channels: |max| per channel (bars) and per-channel percentiles, threshold marked."""
    arrays = report.arrays(key)
    absmax = arrays["absmax"].numpy()
    channels = list(range(len(absmax)))
    fig = go.Figure(go.Bar(x=channels, y=absmax.tolist(), name="|max|", marker_color=SELECTED,
                           hovertemplate="channel %{x}<br>|max| %{y:.4g}<extra></extra>"))
    if "channel_percentiles" in arrays:
        for colour, percent, values in zip(PERCENTILE_COLOURS, report.spec.percentiles, arrays["channel_percentiles"]):
            fig.add_trace(go.Scatter(x=channels, y=values.tolist(), name=f"p{percent:g}", mode="markers",
                                     marker={"color": colour, "size": 3}))
    fig.add_trace(threshold_line(channels, report.spec.outlier_threshold))
    log_axis(fig)
    return styled(fig, f"Channels of {key}", "input channel", "|activation| (log scale)")


def outlier_table(report: StatsReport, top: int | None = None) -> pd.DataFrame:
    """The top outlier channels with where their maximum was set, formatted for a table."""
    frame = report.outliers(top)
    frame.insert(0, "layer", [short_name(k) for k in frame["key"]])
    return frame[["layer", "channel", "absmax", "min", "max", "row", "position", "key"]].round({"absmax": 2, "min": 2, "max": 2})
