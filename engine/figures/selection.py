"""Figures of sample selection: sample-count sweeps, cluster selections, the comparison experiment."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from engine.figures.style import ASKED, CORPUS, SELECTED, log_axis, styled
from engine.sampling import Strategy

if TYPE_CHECKING:  # the result type only: figures never run an experiment
    from engine.experiments import SweepResult

SWEEP_METRICS = {  # column -> (legend, colour)
    "absmax_change": ("|max| (= an int8 / FP8 static minmax scale)", SELECTED),
    "percentile_change": ("percentile", ASKED),
    "hessian_change": ("Hessian (Frobenius)", "#f59e0b"),
    "nvfp4_minmax_change": ("NVFP4 global scale, minmax", "#0ea5e9"),
    "nvfp4_headroom_change": ("NVFP4 global scale, headroom", "#14b8a6"),
    "awq_mean_change": ("AWQ's mean |x| per channel", "#a855f7"),
}
PALETTE = qualitative.Set2 + qualitative.Pastel1


def _band(fig: go.Figure, x: list, low: list, high: list, colour: str, name: str) -> None:
    fig.add_trace(go.Scatter(x=x + x[::-1], y=high + low[::-1], fill="toself", fillcolor=colour, opacity=0.18,
                             line={"width": 0}, hoverinfo="skip", showlegend=False, name=f"{name} band"))


def sweep_curves(result: SweepResult) -> go.Figure:
    """Relative change to the full set against sample count: the median over inputs, its mean over
    shuffles as the line and the min–max over shuffles as the band (log-log). A change of exactly 0
    (once every input's maximum has been seen) has no place on a log axis: it is drawn at the
    axis floor as an open triangle labelled "exactly 0", so the line reaches the count it is true for."""
    fig = go.Figure()
    curves = {column: result.curves(column) for column in SWEEP_METRICS if column in result.rows}
    below_full = {c: curve[curve["count"] < result.counts[-1]] for c, curve in curves.items()}
    positive = [v for curve in below_full.values() for v in curve["mean"] if v > 0]
    floor = min(positive, default=1e-3) / 4
    for column, curve in below_full.items():
        name, colour = SWEEP_METRICS[column]
        x = curve["count"].tolist()
        mean = curve["mean"].where(curve["mean"] > 0, floor).tolist()
        low = curve["low"].where(curve["low"] > 0, floor).tolist()
        high = curve["high"].where(curve["high"] > 0, floor).tolist()
        _band(fig, x, low, high, colour, name)
        exact = (curve["mean"] == 0).tolist()
        fig.add_trace(go.Scatter(
            x=x, y=mean, mode="lines+markers", name=name, line={"color": colour},
            marker={"symbol": ["triangle-down-open" if zero else "circle" for zero in exact],
                    "size": [11 if z else 7 for z in exact]},
            customdata=["exactly 0" if zero else f"{value:.3g}" for zero, value in zip(exact, curve["mean"])],
            hovertemplate="%{x} samples: %{customdata}<extra>" + name + "</extra>"))
    fig.update_xaxes(type="log", dtick=0.30103)
    log_axis(fig, percent=True)
    shuffles = result.meta["shuffles"]
    return styled(fig, f"How far n samples are from all {result.counts[-1]} (median over {result.meta['inputs']} inputs, "
                       f"band: {shuffles} shuffles; ▽ = exactly 0)", "calibration samples (log)",
                  "relative change to the full set (log)")


def selection_scatter(selection: pd.DataFrame, title: str = "Candidates in embedding space (PCA)") -> go.Figure:
    """Every candidate document in the first two principal components, coloured by cluster, the
    selected representatives drawn large with a dark outline."""
    fig = go.Figure()
    clusters = sorted(selection["cluster"].unique())
    colours = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(clusters)}
    fig.add_trace(go.Scatter(x=selection["pc1"].tolist(), y=selection["pc2"].tolist(), mode="markers", name="candidates",
                             marker={"color": [colours[c] for c in selection["cluster"]], "size": 6, "opacity": 0.6},
                             text=[f"document {r}, cluster {c}" for r, c in zip(selection["row_id"], selection["cluster"])],
                             hovertemplate="%{text}<extra></extra>"))
    chosen = selection[selection["selected"]]
    fig.add_trace(go.Scatter(x=chosen["pc1"].tolist(), y=chosen["pc2"].tolist(), mode="markers", name="selected",
                             marker={"color": [colours[c] for c in chosen["cluster"]], "size": 13, "symbol": "diamond",
                                     "line": {"color": "#0f172a", "width": 1.5}},
                             text=[f"selected: document {r}, cluster {c}" for r, c in zip(chosen["row_id"], chosen["cluster"])],
                             hovertemplate="%{text}<extra></extra>"))
    return styled(fig, f"{title}: {len(selection):,} candidates, {len(clusters)} clusters, {len(chosen)} selected",
                  "principal component 1", "principal component 2")


def comparison_bars(table: pd.DataFrame, scheme: str, evaluation: str, float_perplexity: float | None = None) -> go.Figure:
    """Mean perplexity ± std over seeds per strategy, grouped by sample count (one scheme, one
    evaluation set; every calibration corpus in the table gets its own bar group label)."""
    rows = table[(table["scheme"] == scheme) & (table["evaluation"] == evaluation)]
    fig = go.Figure()
    canonical = [s.value for s in Strategy]  # random first: the baseline the others are read against
    strategies = sorted(dict.fromkeys(rows["strategy"]), key=lambda s: canonical.index(s) if s in canonical else len(canonical))
    for i, strategy in enumerate(strategies):
        part = rows[rows["strategy"] == strategy]
        labels = [f"{c} · n={n}" if rows["calibration"].nunique() > 1 else f"n={n}"
                  for c, n in zip(part["calibration"], part["samples"])]
        fig.add_trace(go.Bar(x=labels, y=part["mean"].tolist(), name=strategy, marker={"color": PALETTE[i % len(PALETTE)]},
                             error_y={"type": "data", "array": part["std"].fillna(0).tolist(),
                                      "visible": bool(part["std"].notna().any())},
                             text=[f"{mean:.2f}" for mean in part["mean"]], textposition="inside", insidetextanchor="end",
                             hovertemplate=strategy + ": %{y:.3f} ± %{error_y.array:.3f}<extra></extra>"))
    if float_perplexity is not None:
        fig.add_hline(y=float_perplexity, line={"color": CORPUS, "dash": "dash"},
                      annotation_text=f"float {float_perplexity:.2f}", annotation_position="top left")
    fig.update_layout(barmode="group")
    styled(fig, f"{scheme} on {evaluation}: mean ± std over seeds (lower is better)", "calibration set", "perplexity")
    fig.update_yaxes(range=_perplexity_range(rows, float_perplexity))
    return fig


def _perplexity_range(rows: pd.DataFrame, float_perplexity: float | None) -> list[float]:
    """From a little below the float model (or the lowest bar) to above the highest bar: strategies
    differ by a point or two on a scale of tens, which bars from zero would flatten."""
    spread = rows["std"].fillna(0)
    low = float((rows["mean"] - spread).min())
    high = float((rows["mean"] + spread).max())
    if float_perplexity is not None:
        low = min(low, float_perplexity)
    margin = 0.1 * max(high - low, 1e-3)
    return [max(low - margin, 0.0), high + margin]
