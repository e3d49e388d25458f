"""Activation ranges: stream the calibration set through the model once and inspect every layer."""
from __future__ import annotations

from dataclasses import replace

import gradio as gr
import pandas as pd

from engine.errors import SpecError
from engine.figures import (
    attribution_html,
    channel_heatmap,
    layer_channels,
    layer_distributions,
    outlier_table,
    ranges_across_depth,
)
from engine.figures.stats import short_name
from engine.stats import StatsReport, StatsSpec, collect
from engine.stats.attribution import attribute
from engine.stats.report import percentile_column
from engine.stats.specs import CAPTURES, LAYER_TYPES
from ui.cancel import cancel_button, cancellable, wire_cancel
from ui.errors import shown_to_user
from ui.state import MODELS, Session


def parse_percentiles(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(p) for p in text.replace(";", ",").split(",") if p.strip())
    except ValueError:
        raise SpecError(f"Percentiles {text!r} must be numbers separated by commas, e.g. 99.9, 99.99, 99.999.") from None


def stats_spec_from_widgets(layer_types, pattern, include_head, capture, percentiles, channel_histograms, threshold, batch_size) -> StatsSpec:
    return StatsSpec(
        layer_types=tuple(layer_types or ()), name_pattern=(pattern or "").strip(), include_head=bool(include_head),
        capture=capture, percentiles=parse_percentiles(percentiles), channel_histograms=bool(channel_histograms),
        outlier_threshold=float(threshold or 0), batch_size=int(batch_size or 0),
    )


def layer_table(report: StatsReport) -> pd.DataFrame:
    """One row per observed tensor, numbers rounded, for a sortable table."""
    columns = ["layer", "channels", "tokens", "absmax", *[percentile_column(p) for p in report.spec.percentiles],
               "outlier_channels", "top_channel", "shared_with", "key"]
    table = report.summary.copy()
    table["layer"] = [short_name(k) for k in table["key"]]
    table["shared_with"] = [short_name(k) if k else "" for k in table["shared_with"]]
    return table[columns].round(3)


def status_line(report: StatsReport, reused: bool = False) -> str:
    meta = report.meta
    saved = f", {meta['shared']} reuse another layer's input" if meta["shared"] else ""
    verb = "**Reused** (same set and settings as your last run):" if reused else "**Collected**"
    return (f"{verb} {meta['observed']} tensors ({meta['distinct']} distinct{saved}) over {meta['samples']:,} samples, "
            f"{meta['tokens']:,} tokens · {meta['seconds']:.1f} s")


def drill_down(report: StatsReport, key: str, session: Session):
    loaded = MODELS.get(session.model_spec)
    return layer_channels(report, key), attribution_html(attribute(report, key, session.calibration, loaded.tokenizer))


@shown_to_user
def collect_statistics(layer_types, pattern, include_head, capture, percentiles, channel_histograms, threshold, batch_size,
                       session: Session | None, progress=gr.Progress(), request: gr.Request = None):
    session = session or Session()
    calibration = session.require_calibration()
    spec = stats_spec_from_widgets(layer_types, pattern, include_head, capture, percentiles, channel_histograms, threshold, batch_size)
    loaded = MODELS.get(session.model_spec)
    reused = session.reusable_stats(spec)
    report = reused or collect(loaded, calibration, spec, progress=cancellable(progress, request))
    session = replace(session, stats=report)
    top = report.summary.sort_values("absmax", ascending=False)["key"].iloc[0]
    channels, attribution = drill_down(report, top, session)
    return (
        status_line(report, reused is not None), ranges_across_depth(report), layer_table(report), outlier_table(report),
        channel_heatmap(report), layer_distributions(report),
        gr.update(choices=list(report.summary["key"]), value=top), channels, attribution, session,
    )


@shown_to_user
def show_layer(key: str, session: Session | None):
    session = session or Session()
    report = session.require_stats()
    if not key:
        raise gr.Error("Choose a layer.")
    return drill_down(report, key, session)


def pick_from_table(table: pd.DataFrame, event: gr.SelectData):
    """Clicking a row of the layer table selects that layer in the drill-down."""
    row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    return gr.update(value=table.iloc[row]["key"])


def build_tab(session: gr.State) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            layer_types = gr.CheckboxGroup(list(LAYER_TYPES), value=list(LAYER_TYPES), label="Layer types")
            pattern = gr.Textbox(label="Layer name filter (regular expression)", placeholder=r"e.g. layers\.(0|1)\. or mlp")
            include_head = gr.Checkbox(value=False, label="Include the LM head", info="Off: passes skip the head and its logits")
            capture = gr.Radio(list(CAPTURES), value="inputs", label="Capture", info="inputs are what quantizers calibrate")
            percentiles = gr.Textbox(value="99.9, 99.99, 99.999", label="Percentiles of |x|")
            with gr.Row():
                threshold = gr.Number(value=6.0, label="Outlier threshold", info="LLM.int8() uses 6")
                batch_size = gr.Number(value=8, label="Batch size", precision=0, minimum=1)
            channel_histograms = gr.Checkbox(value=True, label="Per-channel percentiles", info="128-bin histogram per channel")
            with gr.Row():
                run = gr.Button("Collect statistics", variant="primary", scale=3)
                cancel = cancel_button()
        with gr.Column(scale=3):
            status = gr.Markdown("Build a calibration set, then collect statistics.", elem_classes="cs-status")
            ranges = gr.Plot(show_label=False)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            table = gr.Dataframe(label="Layers (click a row to inspect it; sortable)", interactive=False, max_height=380)
        with gr.Column(scale=2):
            outliers = gr.Dataframe(label="Top outlier channels (|max| above the threshold)", interactive=False, max_height=380)
    gr.Markdown("### Inspect one layer")
    layer = gr.Dropdown(label="Layer", choices=[], interactive=True)
    attribution = gr.HTML()
    channels = gr.Plot(show_label=False)
    with gr.Accordion("All channels and distributions", open=False):
        heatmap = gr.Plot(show_label=False)
        distributions = gr.Plot(show_label=False)

    event = run.click(
        collect_statistics,
        [layer_types, pattern, include_head, capture, percentiles, channel_histograms, threshold, batch_size, session],
        [status, ranges, table, outliers, heatmap, distributions, layer, channels, attribution, session],
        show_progress_on=[status], concurrency_id="heavy", api_name="collect_statistics",
    )
    wire_cancel(cancel, event, status)
    layer.input(show_layer, [layer, session], [channels, attribution])
    table.select(pick_from_table, table, layer).then(show_layer, [layer, session], [channels, attribution])
