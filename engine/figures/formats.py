"""Figures of float-format calibration: what FP8 and NVFP4 would calibrate per layer input, and
whether its blocks fit one NVFP4 global scale."""
from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.figures.stats import short_name
from engine.figures.style import ASKED, EDGE, SELECTED, log_axis, styled
from engine.stats import FP8_NORMAL_RANGE

LINES = {  # column -> (legend, colour, dash)
    "fp8_percentile": ("FP8 range, p99.99", ASKED, "dot"),
    "fp8_mse": ("FP8 range, MSE", "#f59e0b", "solid"),
    "fp8_entropy": ("FP8 range, entropy", SELECTED, "solid"),
    "nvfp4_headroom": ("NVFP4 amax, headroom", "#14b8a6", "dash"),
}


def format_ranges_across_depth(table: pd.DataFrame) -> go.Figure:
    """Top: each method's range as a multiple of the set's |max| (1 = minmax), per distinct input in
    execution order. Bottom: the 16-channel blocks' spread (p99.99 / p1 of their |max|) against
    the 28,672 one NVFP4 global scale can hold in normal e4m3 block scales."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.55, 0.45])
    names = [short_name(key) for key in table["key"]]
    x = list(range(len(table)))
    for column, (legend, colour, dash) in LINES.items():
        if column in table and table[column].notna().any():
            fig.add_trace(go.Scatter(x=x, y=table[column], name=legend, mode="lines+markers", customdata=names,
                                     line={"color": colour, "dash": dash}, marker={"size": 5},
                                     hovertemplate="%{customdata}: %{y:.3g} x |max|<extra>" + legend + "</extra>"), row=1, col=1)
    fig.add_hline(y=1.0, line={"color": EDGE, "width": 1}, row=1, col=1)
    if "block_spread" in table and table["block_spread"].notna().any():
        beyond = table["beyond_fp8_range"].fillna(False).astype(bool)
        fig.add_trace(go.Bar(x=x, y=table["block_spread"], name="NVFP4 blocks' spread", customdata=names,
                             marker={"color": ["#dc2626" if flag else "#94a3b8" for flag in beyond]},
                             hovertemplate="%{customdata}: blocks span %{y:.3g}x<extra></extra>"), row=2, col=1)
        fig.add_hline(y=FP8_NORMAL_RANGE, line={"color": "#dc2626", "dash": "dash", "width": 1}, row=2, col=1)
        fig.add_annotation(x=0.005, xref="x2 domain", y=math.log10(FP8_NORMAL_RANGE), yref="y2", showarrow=False,
                           xanchor="left", yanchor="bottom", font={"size": 11, "color": "#dc2626"},
                           text="28,672: what one global scale holds in normal e4m3 block scales")
    count = int(table.get("beyond_fp8_range", pd.Series(dtype=bool)).fillna(False).astype(bool).sum())
    title = (f"FP8 and NVFP4 calibration per input · {count} of {len(table)} inputs' blocks spread beyond one NVFP4 "
             "global scale" if "block_spread" in table else "FP8 calibration per input")
    styled(fig, title, "", "")
    fig.update_layout(height=560)
    log_axis(fig, row=1, col=1, title_text="range / |max|")
    spread = table["block_spread"].replace(float("inf"), float("nan")) if "block_spread" in table else pd.Series(dtype=float)
    low = math.log10(max(float(spread.min()), 1.0)) - 0.2 if spread.notna().any() else 0.0
    log_axis(fig, row=2, col=1, title_text="p99.99 / p1 of block |max|", range=[low, math.log10(FP8_NORMAL_RANGE) + 0.4])
    fig.update_xaxes(title_text="layer input (execution order)", row=2, col=1)
    return fig
