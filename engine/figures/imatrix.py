"""Figures of importance matrices: where the important channels are, one tensor's channels, MoE
experts' token counts, and two matrices compared."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.figures.coverage import expert_token_heatmap
from engine.figures.style import ASKED, CORPUS, SELECTED, log_axis, styled
from engine.imatrix import Imatrix, tensor_order


def _block_and_kind(name: str) -> tuple[str, str]:
    """("3", "attn_q") for ``blk.3.attn_q.weight``; ("", name) outside the blocks."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) > 2:
        return parts[1], ".".join(parts[2:]).removesuffix(".weight")
    return "", name.removesuffix(".weight")


def concentration(imatrix: Imatrix) -> pd.DataFrame:
    """Per tensor: the largest mean x² over the median (how far its top channel stands out), the
    top channel, tokens, and the experts that saw no token."""
    rows = []
    for name in imatrix.names():
        entry = imatrix.entries[name]
        importance = entry.importance()
        flat = importance[np.isfinite(importance)]
        top = int(np.nanargmax(importance)) % entry.channels if flat.size else -1
        median = float(np.median(flat)) if flat.size else np.nan
        block, kind = _block_and_kind(name)
        rows.append({"tensor": name, "block": block, "kind": kind, "channels": entry.channels, "experts": entry.experts,
                     "tokens": int(entry.counts.max()), "top_channel": top,
                     "max_over_median": float(flat.max() / median) if flat.size and median > 0 else np.nan,
                     "unused_experts": int((entry.counts == 0).sum())})
    return pd.DataFrame(rows)


def concentration_heatmap(imatrix: Imatrix) -> go.Figure:
    """Blocks x tensor kinds, coloured by log10(max / median mean x²): the outlier channels' map."""
    table = concentration(imatrix)
    table = table[table["block"] != ""]
    kinds = list(dict.fromkeys(table["kind"]))
    blocks = sorted(set(table["block"]), key=int)
    grid = table.pivot(index="block", columns="kind", values="max_over_median").reindex(index=blocks, columns=kinds)
    channel = table.pivot(index="block", columns="kind", values="top_channel").reindex(index=blocks, columns=kinds)
    fig = go.Figure(go.Heatmap(
        z=np.log10(grid.to_numpy(dtype=float)), x=kinds, y=[f"blk.{b}" for b in blocks], colorscale="Viridis",
        customdata=channel.to_numpy(dtype=float), colorbar={"title": "log₁₀ max/median"},
        hovertemplate="%{y}.%{x}<br>top channel %{customdata:.0f}<br>max / median = 10^%{z:.2f}<extra></extra>"))
    styled(fig, "Where the important channels are: largest mean x² over the median, per tensor", "tensor", "block")
    fig.update_yaxes(autorange="reversed")
    return fig.update_layout(height=max(380, 22 * len(blocks) + 140))


def _name(imatrix: Imatrix, label: str) -> str:
    return label or Path(imatrix.origin).name or "this matrix"


def channel_importance(imatrix: Imatrix, tensor: str, top: int = 10, compared: Imatrix | None = None,
                       labels: tuple[str, str] = ("", "")) -> go.Figure:
    """One tensor's mean x² per input channel (log), its ``top`` channels marked; a second matrix
    (``compared``) drawn behind it when given. ``labels`` name the two in the legend."""
    entry = imatrix.entries[tensor]
    importance = entry.channel_importance()
    channels = np.arange(entry.channels)
    fig = go.Figure()
    if compared is not None and tensor in compared.entries and compared.entries[tensor].channels == entry.channels:
        fig.add_trace(go.Scattergl(x=channels, y=compared.entries[tensor].channel_importance(), mode="lines",
                                   name=_name(compared, labels[1]), line={"color": CORPUS, "width": 1}))
    fig.add_trace(go.Scattergl(x=channels, y=importance, mode="lines", name=_name(imatrix, labels[0]),
                               line={"color": SELECTED, "width": 1}))
    order = np.argsort(-np.nan_to_num(importance, nan=-np.inf))[:top]
    fig.add_trace(go.Scatter(x=order, y=importance[order], mode="markers+text", name=f"top {len(order)}",
                             text=[str(c) for c in order], textposition="top center", marker={"color": ASKED, "size": 8}))
    log_axis(fig)
    suffix = f" (mean over {entry.experts} experts)" if entry.experts > 1 else ""
    return styled(fig, f"{tensor}: mean x² per input channel{suffix}", "input channel", "mean x² (log)")


def top_channels(imatrix: Imatrix, tensor: str, top: int = 10) -> pd.DataFrame:
    entry = imatrix.entries[tensor]
    importance = entry.channel_importance()
    order = np.argsort(-np.nan_to_num(importance, nan=-np.inf))[:top]
    median = float(np.nanmedian(importance))
    return pd.DataFrame({"channel": order, "mean x²": importance[order],
                         "× median": importance[order] / median if median > 0 else np.nan})


def expert_counts(imatrix: Imatrix, threshold: int) -> go.Figure | None:
    """MoE: tokens routed to each expert per block (one tensor per block: the experts' first), with
    experts under ``threshold`` tokens marked; None for a dense model."""
    moe = [n for n in imatrix.names() if imatrix.entries[n].experts > 1]
    per_block = {}
    for name in moe:
        per_block.setdefault(_block_and_kind(name)[0], name)
    if not per_block:
        return None
    counts = np.array([imatrix.entries[n].counts for n in per_block.values()], dtype=float)
    return expert_token_heatmap(counts, [f"blk.{b}" for b in per_block], threshold)


def comparison_figure(table: pd.DataFrame, label_a: str, label_b: str) -> go.Figure:
    """Per tensor, in block order: the 99th-percentile relative difference of mean x² (log) and
    the rank correlation of the channels (second axis)."""
    from plotly.subplots import make_subplots

    rows = table[table["comparable"]].copy()
    rows["order"] = rows["tensor"].map(tensor_order)
    rows = rows.sort_values("order")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=rows["tensor"], y=rows["p99_relative_difference"], mode="markers", name="p99 relative difference",
                             marker={"color": SELECTED, "size": 6}), secondary_y=False)
    fig.add_trace(go.Scatter(x=rows["tensor"], y=rows["spearman"], mode="lines", name="rank correlation",
                             line={"color": ASKED, "width": 1}), secondary_y=True)
    log_axis(fig, percent=True, title_text="p99 |a − b| / b (log)", secondary_y=False)
    fig.update_yaxes(title_text="Spearman ρ of channels", secondary_y=True, showgrid=False,
                     range=[min(0.0, rows["spearman"].min()), 1.02])
    fig.update_xaxes(showticklabels=len(rows) <= 40, tickangle=-60)
    styled(fig, f"{label_a} vs {label_b}: per-channel difference and ranking, per tensor", "tensor (block order)", "")
    return fig
