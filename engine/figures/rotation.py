"""The rotation's view: each rotated layer's input before and after rotation on the same calibration
set (how far its largest channel stands above the median channel), and the layer's predicted
quantization error both ways, with the layers "where it helps" left unrotated marked."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.figures.stats import short_name
from engine.figures.style import SELECTED, styled
from engine.quant import QuantReport

BEFORE, AFTER = "#94a3b8", SELECTED


def rotation_ranges(report: QuantReport) -> go.Figure | None:
    """Two panels over the rotated layers in execution order: the input's largest channel |max| over
    its median channel's, unrotated and rotated; and the predicted relative output error, unrotated and
    rotated (a hollow marker: the layer was left unrotated); for fused rotations alone, the first panel
    (the model as loaded and turned). None for a run without a rotation."""
    table = report.layers
    if "error_rotated" not in table or table["error_rotated"].isna().all():
        fused = report.spec.rotation is not None and report.spec.rotation.fused
        return _turned_ranges(report) if fused and "channel_ratio_after" in table else None
    rows = table.dropna(subset=["error_rotated"]).reset_index(drop=True)
    names = [short_name(layer) for layer in rows["layer"]]
    x = np.arange(len(rows))
    kept = rows["rotated"].astype(bool).to_numpy()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=(RATIO_TITLE, "Predicted relative output error on the calibration set's first tokens"))
    _ratio_traces(fig, rows, names, ("unrotated", "rotated"))
    for column, label, colour in (("error_unrotated", "unrotated", BEFORE), ("error_rotated", "rotated", AFTER)):
        symbols = ["circle" if chosen else "circle-open" for chosen in kept] if label == "rotated" else "circle"
        fig.add_trace(go.Scatter(x=x, y=rows[column], mode="markers", name=f"{label} error", legendgroup=label,
                                 showlegend=False, marker={"color": colour, "size": 6, "symbol": symbols}, text=names,
                                 hovertemplate="%{text}: %{y:.3%}<extra>" + label + "</extra>"), row=2, col=1)
    left = int((~kept).sum())
    said = f"{int(kept.sum())} of {len(rows)} layers rotated" + (f"; {left} left unrotated (hollow)" if left else "")
    styled(fig, f"Rotation: inputs before and after, and what it predicts ({said})", "", "")
    _ratio_axis(fig, rows)
    fig.update_yaxes(type="log", row=2, col=1, title_text="relative error", tickformat=".1%", dtick="D2")
    step = max(1, len(rows) // 24)
    fig.update_xaxes(tickvals=x[::step], ticktext=names[::step], tickangle=-45, row=2, col=1)
    fig.update_annotations(font_size=12)
    fig.update_layout(height=560, legend={"y": 1.08})
    return fig


def _turned_ranges(report: QuantReport) -> go.Figure:
    """Fused rotations alone (nothing rotated online, so nothing predicted): each quantized layer's
    input on the model as loaded and as turned, on the same calibration set."""
    rows = report.layers.dropna(subset=["channel_ratio_after"]).reset_index(drop=True)
    names = [short_name(layer) for layer in rows["layer"]]
    x = np.arange(len(rows))
    fig = make_subplots(rows=1, cols=1, subplot_titles=(RATIO_TITLE,))
    _ratio_traces(fig, rows, names, ("as loaded", "turned"))
    fell = float((rows["channel_ratio_before"] / rows["channel_ratio_after"]).median())
    styled(fig, f"Fused rotation: {len(rows)} layers' inputs before and after (the ratio fell {fell:.1f}x, median)", "", "")
    _ratio_axis(fig, rows)
    step = max(1, len(rows) // 24)
    fig.update_xaxes(tickvals=x[::step], ticktext=names[::step], tickangle=-45, row=1, col=1)
    fig.update_annotations(font_size=12)
    fig.update_layout(height=420, legend={"y": 1.12})
    return fig


RATIO_TITLE = "Largest channel |max| over the median channel's (1 = no outlier channel)"


def _ratio_traces(fig: go.Figure, rows, names: list[str], labels: tuple[str, str]) -> None:
    """The first panel: each input's largest-over-median channel ratio both ways, its ranges on hover."""
    hover = [f"{name}<br>|max| {before:.3g} → {after:.3g}<br>|max|/RMS {crest_b:.1f} → {crest_a:.1f}<br>"
             f"largest 1% of channels: {100 * share_b:.1f}% → {100 * share_a:.1f}% of the summed |max|"
             for name, before, after, crest_b, crest_a, share_b, share_a in
             zip(names, rows["absmax_before"], rows["absmax_after"], rows["crest_before"], rows["crest_after"],
                 rows["top_share_before"], rows["top_share_after"])]
    x = np.arange(len(rows))
    for column, label, colour in (("channel_ratio_before", labels[0], BEFORE), ("channel_ratio_after", labels[1], AFTER)):
        fig.add_trace(go.Scatter(x=x, y=rows[column], mode="markers", name=f"{label} input", legendgroup=label,
                                 marker={"color": colour, "size": 6}, text=hover,
                                 hovertemplate="%{text}<br>ratio %{y:.2f}<extra></extra>"), row=1, col=1)


def _ratio_axis(fig: go.Figure, rows) -> None:
    highest = float(np.nanmax(rows[["channel_ratio_before", "channel_ratio_after"]].to_numpy()))
    ticks = [value for value in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if value <= 2 * highest]
    fig.update_yaxes(type="log", row=1, col=1, title_text="ratio", tickvals=ticks, ticktext=[str(v) for v in ticks])
