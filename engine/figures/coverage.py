"""Figures of coverage: tokens per MoE expert against an under-calibration threshold, and how many
of each block's outlier channels a calibration set reaches."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.figures.style import CORPUS, SELECTED, log_axis, styled
from engine.sampling import Target

UNDER = "#ef4444"


def expert_token_heatmap(counts: np.ndarray, blocks: list[str], threshold: int) -> go.Figure:
    """Blocks x experts heat map of routed tokens, experts under ``threshold`` marked (x), and beside
    it every expert's count, sorted, on a log axis with the threshold as a line."""
    counts = np.asarray(counts, dtype=float)
    under = np.argwhere(counts < threshold)
    # horizontal_spacing: room for the colour bar and the log axis
    fig = make_subplots(rows=1, cols=2, column_widths=[0.68, 0.32], horizontal_spacing=0.18,
                        subplot_titles=("per block and expert", "every expert, sorted"))
    fig.add_trace(go.Heatmap(z=counts, y=blocks, colorscale="Blues", colorbar={"title": "tokens", "x": 0.568, "thickness": 10},
                             hovertemplate="%{y}, expert %{x}: %{z:,.0f} tokens<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Scatter(x=under[:, 1], y=[blocks[i] for i in under[:, 0]], mode="markers",
                             name=f"under-calibrated: fewer than {threshold:,} tokens",
                             marker={"symbol": "x", "color": UNDER, "size": 9}), row=1, col=1)
    ordered = np.sort(counts.ravel())
    fig.add_trace(go.Scatter(x=np.arange(1, ordered.size + 1), y=np.maximum(ordered, 0.5), mode="lines+markers", showlegend=False,
                             marker={"size": 4, "color": np.where(ordered < threshold, UNDER, SELECTED)},
                             line={"color": CORPUS, "width": 1},
                             hovertemplate="rank %{x}: %{customdata:,.0f} tokens<extra></extra>", customdata=ordered),
                  row=1, col=2)
    fig.add_hline(y=threshold, line={"color": UNDER, "dash": "dash"}, row=1, col=2)
    # on a log axis an annotation's y is the exponent: placed by hand (add_hline's would land at 10^threshold)
    fig.add_annotation(x=0, xref="x2 domain", xanchor="left", y=np.log10(max(threshold, 1)), yref="y2", yanchor="bottom",
                       text=f"{threshold:,} tokens", showarrow=False, font={"color": UNDER, "size": 11})
    styled(fig, f"Tokens per expert: {len(under):,} of {counts.size:,} experts under {threshold:,} tokens"
           f"{f', {int((counts == 0).sum()):,} with none' if (counts == 0).any() else ''}", "expert", "block")
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    log_axis(fig, "y", row=1, col=2, title_text="tokens (0 drawn at 0.5)")
    fig.update_xaxes(title_text="experts, fewest tokens first", row=1, col=2)
    fig.update_layout(legend={"yanchor": "top", "y": -0.22, "x": 0.0, "xanchor": "left"})  # below: clear of the titles
    return fig


def outlier_coverage(table: pd.DataFrame, block_of) -> go.Figure:
    """Per block: its inputs' outlier channels the set reaches (>= the fraction of the reference max)
    and those it leaves uncovered, stacked. ``table``: coverage_table rows of kind "channel"."""
    rows = table[table["kind"] == Target.CHANNEL.value].copy()
    rows["block"] = rows["key"].map(block_of)
    per_block = rows.groupby("block", sort=True)[["targets", "covered"]].sum()
    labels = [str(b) for b in per_block.index]
    fig = go.Figure([
        go.Bar(x=labels, y=per_block["covered"], name="reached by the set", marker_color=SELECTED,
               hovertemplate="block %{x}: %{y:,} reached<extra></extra>"),
        go.Bar(x=labels, y=per_block["targets"] - per_block["covered"], name="not reached", marker_color=UNDER,
               hovertemplate="block %{x}: %{y:,} not reached<extra></extra>"),
    ])
    total, covered = int(per_block["targets"].sum()), int(per_block["covered"].sum())
    share = covered / total if total else 1.0
    styled(fig, f"Outlier channels reached: {covered:,} of {total:,} ({share:.0%})", "block", "outlier channels")
    fig.update_layout(barmode="stack")
    return fig
