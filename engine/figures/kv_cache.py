"""Figures of the KV cache: what each attention layer caches (keys after the key norm and the rotary
embedding, values), how wide per KV head, what each range method would set for an FP8 cache, and
where along the sequence the keys reach their range."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.figures.style import ASKED, EDGE, SELECTED, log_axis, styled
from engine.stats import POSITION_EDGES, KVReport, bucket_label

TENSOR_COLOURS = {"key": SELECTED, "value": "#f59e0b"}
METHOD_DASHES = {"p99.99": "dot", "MSE": "solid", "entropy": "dash"}


def position_share(report: KVReport, tensor: str = "key") -> tuple[np.ndarray, list[str]]:
    """[buckets seen, layers]: each layer's |max| in a bucket of positions over its |max| anywhere
    (widest head), and the buckets' labels; buckets no token reached are left out."""
    layers = list(report.layers.values())
    seen = [i for i in range(len(POSITION_EDGES)) if int(layers[0][tensor].bucket_tokens[i]) > 0] if layers else []
    share = np.array([[float(stats[tensor].bucket_absmax[i].max() / stats[tensor].absmax.max().clamp(min=1e-30))
                       for stats in layers] for i in seen])
    return share.reshape(len(seen), len(layers)), [bucket_label(i) for i in seen]


def kv_cache_ranges(report: KVReport, methods: pd.DataFrame) -> go.Figure:
    """Top: each layer's key and value |max| per KV head. Middle: what the range methods would set
    for an FP8 cache per tensor, as a multiple of that |max| (``methods``: kv_method_ranges). Bottom:
    the keys' |max| within each span of positions over their |max| anywhere: where positions push
    the range (a set of short samples never sees the later spans)."""
    fig = make_subplots(rows=3, cols=1, vertical_spacing=0.1, row_heights=[0.38, 0.3, 0.32],
                        subplot_titles=("|max| per KV head", "FP8 range / |max| (per tensor)",
                                        "keys' |max| by position / |max|"))
    blocks = list(range(len(report.layers)))
    for tensor, colour in TENSOR_COLOURS.items():
        heads = np.array([stats[tensor].absmax.numpy() for stats in report.layers.values()]).reshape(len(blocks), -1)
        for head in range(heads.shape[1]):
            fig.add_trace(go.Scatter(x=blocks, y=heads[:, head], mode="lines+markers", name=f"{tensor}s, head {head}",
                                     line={"color": colour, "width": 1.5, "dash": "solid" if head == 0 else "dot"},
                                     marker={"size": 5}, legendgroup=tensor,
                                     hovertemplate=f"block %{{x}}: %{{y:.4g}}<extra>{tensor}s, head {head}</extra>"),
                          row=1, col=1)
    for label, dash in METHOD_DASHES.items():
        for tensor, colour in TENSOR_COLOURS.items():
            rows = methods[methods["tensor"] == tensor]
            fig.add_trace(go.Scatter(x=rows["block"], y=rows[label], mode="lines", name=f"{tensor}s, {label}",
                                     line={"color": colour, "dash": dash, "width": 1.5}, legendgroup=f"{tensor} {label}",
                                     hovertemplate=f"block %{{x}}: %{{y:.3g}} x |max|<extra>{tensor}s, {label}</extra>"),
                          row=2, col=1)
    fig.add_hline(y=1.0, line={"color": EDGE, "width": 1}, row=2, col=1)
    share, labels = position_share(report)
    fig.add_trace(go.Heatmap(z=share, x=blocks, y=labels, colorscale=[[0, "#f8fafc"], [1, ASKED]], zmin=0, zmax=1,
                             colorbar={"title": "share", "len": 0.3, "y": 0.15}, showscale=True,
                             hovertemplate="block %{x}, %{y}: %{z:.2f} x the keys' |max|<extra></extra>"), row=3, col=1)
    heads = report.meta.get("kv_heads", 0)
    styled(fig, f"KV cache · {len(blocks)} attention layers, {heads} KV head{'s' * (heads != 1)}, "
                f"{report.meta.get('tokens', 0):,} tokens", "", "")
    fig.update_layout(height=820, legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"},
                      margin={"r": 190})
    log_axis(fig, row=1, col=1, title_text="|max|")
    fig.update_yaxes(title_text="x |max|", row=2, col=1)
    fig.update_xaxes(title_text="block", row=3, col=1)
    return fig
