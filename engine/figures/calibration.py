"""Figures of a calibration set: token lengths against the corpus, and the per-bucket counts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.figures.style import ASKED, CORPUS, EDGE, SELECTED, log_axis, styled

BINS = 48


def _log_bins(largest: int) -> np.ndarray:
    return np.unique(np.geomspace(1, max(largest, 2) * 1.0001, BINS + 1))


def _share_step(lengths: np.ndarray, bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts, _ = np.histogram(lengths, bins=bins)
    share = 100.0 * counts / max(len(lengths), 1)
    return bins.tolist(), np.append(share, share[-1]).tolist()  # one y per bin edge, for a step line


def length_histogram(corpus_lengths: np.ndarray, selected_lengths: np.ndarray, edges: tuple[int, ...] = (),
                     prefix_length: int = 0) -> go.Figure:
    """Share of corpus documents and of calibration samples per token length (log scale), with bucket edges.

    Corpus lengths are counted as the model would see each document (``prefix_length`` start tokens
    added) so they compare with the samples.
    """
    corpus = np.asarray(corpus_lengths)[np.asarray(corpus_lengths) > 0] + prefix_length
    selected = np.asarray(selected_lengths)
    bins = _log_bins(int(max(corpus.max(initial=1), selected.max(initial=1))))
    fig = go.Figure()
    for name, values, colour, fill in (("corpus documents", corpus, CORPUS, "tozeroy"),
                                       ("calibration samples", selected, SELECTED, None)):
        x, y = _share_step(values, bins)
        fig.add_trace(go.Scatter(
            x=x, y=y, name=f"{name} ({len(values):,})", mode="lines", line={"shape": "hv", "color": colour, "width": 2},
            fill=fill, hovertemplate="%{x:,.0f}+ tokens: %{y:.1f}%<extra>" + name + "</extra>",
        ))
    for edge in edges:
        fig.add_vline(x=edge, line={"color": EDGE, "dash": "dot", "width": 1})
        # on a log axis, annotations (unlike shapes) are placed in log10 units
        fig.add_annotation(x=float(np.log10(edge)), y=1.0, yref="paper", yanchor="bottom", text=f"{edge:,}",
                           showarrow=False, font={"size": 11, "color": EDGE})
    log_axis(fig, "x")
    styled(fig, "Token lengths: corpus vs calibration set", "tokens per sequence (log scale)", "share (%)")
    return fig.update_layout(legend={"y": 1.14}, margin={"t": 100})  # legend above the edge labels


def bucket_bars(buckets: pd.DataFrame) -> go.Figure:
    """Per length bucket: documents available, samples asked, samples selected (log count axis)."""
    fig = go.Figure()
    for column, colour in (("available", CORPUS), ("asked", ASKED), ("selected", SELECTED)):
        fig.add_trace(go.Bar(
            x=buckets["bucket"].tolist(), y=buckets[column].tolist(), name=column, marker_color=colour,
            text=buckets[column].tolist(), textposition="outside", cliponaxis=False,
            hovertemplate="%{x} tokens: %{y:,} " + column + "<extra></extra>",
        ))
    fig.update_layout(barmode="group")
    # log axis: labels at 1, 10, 100, ... only; room below for counts of 1 and above for the labels
    top = float(np.log10(max(1, int(buckets[["available", "asked", "selected"]].to_numpy().max()))))
    log_axis(fig, range=[-0.3, top + 0.4])
    return styled(fig, "Length buckets: available, asked, selected", "bucket (tokens, BOS included)", "count (log scale)")
