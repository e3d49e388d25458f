"""One look for every figure: template, colours, fonts, margins."""
from __future__ import annotations

import math
import warnings

import numpy as np
import plotly.graph_objects as go

CORPUS = "#94a3b8"      # slate: what exists
SELECTED = "#4f46e5"    # indigo: what calibscope chose
ASKED = "#0ea5e9"       # sky: what was asked for
EDGE = "#64748b"


def styled(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 16}},
        xaxis_title=x_title,
        yaxis_title=y_title,
        font={"family": "Inter, system-ui, sans-serif", "size": 13},
        margin={"l": 60, "r": 20, "t": 60, "b": 55},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        hoverlabel={"font_size": 12},
        height=380,
    )
    return fig


def log_axis(fig: go.Figure, axis: str = "y", percent: bool = False, **options) -> go.Figure:
    """A log axis people can read: labels at decades only (unlabelled minor ticks between them),
    exponents as powers (10⁶, never the SI "1T" beside "10^15"), and percentages with significant
    digits (0.001% stays 0.001%, not "0%"). ``options`` go to the axis (range, title_text, secondary_y)."""
    settings = {"type": "log", "dtick": 1, "minor": {"ticks": "outside", "ticklen": 3, "showgrid": False}}
    settings.update({"tickformat": ".2~p"} if percent else {"exponentformat": "power", "showexponent": "all"})
    settings.update(options)
    return fig.update_yaxes(**settings) if axis == "y" else fig.update_xaxes(**settings)


def log_channel_grid(rows: list[np.ndarray], floor: float, max_columns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """log10 of each row's per-channel values (at least ``floor``), NaN beyond a row's width, as a
    float array (plotly sends it as a typed array, not a list of Python floats) and the channel of
    each column. With ``max_columns``, each run of channels becomes one column holding their
    maximum, so an outlier channel stays visible at a fraction of the size."""
    width = max(len(row) for row in rows)
    grid = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        grid[i, : len(row)] = np.log10(np.maximum(row, floor))
    if max_columns is None or width <= max_columns:
        return grid, np.arange(width)
    step = math.ceil(width / max_columns)
    padded = np.pad(grid, ((0, 0), (0, -width % step)), constant_values=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN run (beyond a narrow row) stays NaN
        pooled = np.nanmax(padded.reshape(len(rows), -1, step), axis=2)
    return pooled, np.arange(0, width, step)
