"""Activation ranges: stream the calibration set through the model once and inspect every layer."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import gradio as gr
import pandas as pd

from engine.figures import (
    attribution_html,
    channel_heatmap,
    layer_channels,
    layer_distributions,
    outlier_table,
    ranges_across_depth,
    short_name,
)
from engine.models import LayerKind
from engine.progress import Progress, no_progress
from engine.specs import labels
from engine.stats import Capture, StatsReport, StatsSpec, attribute, collect, percentile_column
from ui.cancel import run_and_cancel
from ui.context import AppContext
from ui.errors import shown_to_user
from ui.estimates import timed_step
from ui.parsing import parse_percentiles, whole
from ui.sections.float_formats import build_section as build_formats
from ui.sections.kv_cache import build_section as build_kv_cache
from ui.state import Session
from ui.tables import shown
from ui.widgets import result_plot, result_table, status_block
from ui.wiring import connect, on_field

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "include_head": "Off: passes skip the head and its logits",
    "capture": "inputs are what quantizers calibrate",
    "channel_histograms": "128-bin histogram per channel",
    "threshold": "LLM.int8() uses 6",
}


@dataclass(frozen=True)
class StatsForm:
    """What the Activation ranges widgets hold."""

    layer_types: list[str] = field(default_factory=lambda: labels(LayerKind))
    pattern: str = ""
    include_head: bool = False
    capture: str = Capture.INPUTS.value
    percentiles: str = "99.9, 99.99, 99.999"
    channel_histograms: bool = True
    threshold: float = 6.0
    batch_size: float = 8

    def spec(self) -> StatsSpec:
        return StatsSpec(
            layer_types=tuple(self.layer_types or ()), name_pattern=(self.pattern or "").strip(),
            include_head=bool(self.include_head), capture=self.capture, percentiles=parse_percentiles(self.percentiles),
            channel_histograms=bool(self.channel_histograms), outlier_threshold=float(self.threshold or 0),
            batch_size=whole(self.batch_size),
        )


def layer_table(report: StatsReport) -> pd.DataFrame:
    """One row per observed tensor, numbers formatted, for a sortable table (``key`` maps a click back)."""
    percentiles = [percentile_column(p) for p in report.spec.percentiles]
    columns = ["layer", "channels", "tokens", "absmax", *percentiles, "outlier_channels", "top_channel", "shared_with", "key"]
    table = report.summary.copy()
    table["layer"] = [short_name(k) for k in table["key"]]
    table["shared_with"] = [short_name(k) if k else "" for k in table["shared_with"]]
    return shown(table[columns], {"tokens": ",d", "absmax": ".4g", **{p: ".4g" for p in percentiles}},
                 headers={"outlier_channels": "outliers", "top_channel": "top channel", "shared_with": "input of"})


def status_line(report: StatsReport, reused: bool = False) -> str:
    meta = report.meta
    saved = f", {meta['shared']} reuse another layer's input" if meta["shared"] else ""
    verb = "**Reused** (same set and settings as your last run):" if reused else "**Collected**"
    return (f"{verb} {meta['observed']} tensors ({meta['distinct']} distinct{saved}) over {meta['samples']:,} samples, "
            f"{meta['tokens']:,} tokens · {meta['plan']['execution']} · {meta['seconds']:.1f} s")


def drill_down(report: StatsReport, key: str, session: Session, context: AppContext):
    tokenizer = context.model(session).tokenizer
    return layer_channels(report, key), attribution_html(attribute(report, key, session.calibration, tokenizer))


def check(form: StatsForm, context: AppContext) -> None:
    spec = on_field("percentiles", form.spec)
    on_field("batch_size", lambda: context.limits.check_batch(spec.batch_size))


def collect_statistics(form: StatsForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    calibration = session.require_calibration()
    check(form, context)
    spec = form.spec()
    reused = session.reusable_stats(spec)
    loaded = context.model(session)
    if reused is None:
        with timed_step(context.times, loaded, "statistics", int(calibration.lengths.sum()), progress):
            report = collect(loaded, calibration, spec, progress=progress)
    else:
        report = reused
    session = replace(session, stats=report)
    top = report.summary.sort_values("absmax", ascending=False)["key"].iloc[0]
    channels, attribution = drill_down(report, top, session, context)
    return {
        "status": status_line(report, reused is not None), "ranges": ranges_across_depth(report),
        "table": layer_table(report), "outliers": outlier_table(report), "heatmap": channel_heatmap(report),
        "distributions": layer_distributions(report), "layer": gr.update(choices=list(report.summary["key"]), value=top),
        "channels": channels, "attribution": attribution, "session": session,
    }


def layer_view(context: AppContext):
    """The drill-down handler for one layer, bound to the app's context."""

    @shown_to_user
    def show_layer(key: str, session: Session | None):
        session = session or Session()
        report = session.require("stats")
        if not key:
            raise gr.Error("Choose a layer.")
        return drill_down(report, key, session, context)

    return show_layer


def pick_from_table(table: pd.DataFrame, event: gr.SelectData):
    """Clicking a row of the layer table selects that layer in the drill-down."""
    row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
    return gr.update(value=table.iloc[row]["key"])


def build_tab(session: gr.State, context: AppContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            layer_types = gr.CheckboxGroup(labels(LayerKind), value=labels(LayerKind), label="Layer types")
            pattern = gr.Textbox(label="Layer name filter (regular expression)", placeholder=r"e.g. layers\.(0|1)\. or mlp")
            include_head = gr.Checkbox(value=False, label="Include the LM head", info=HELP["include_head"])
            capture = gr.Radio(labels(Capture), value=Capture.INPUTS.value, label="Capture",
                               info=HELP["capture"])
            percentiles = gr.Textbox(value="99.9, 99.99, 99.999", label="Percentiles of |x|")
            with gr.Row():
                threshold = gr.Number(value=6.0, label="Outlier threshold", info=HELP["threshold"])
                batch_size = gr.Number(value=8, label="Batch size", precision=0, minimum=1)
            channel_histograms = gr.Checkbox(value=True, label="Per-channel percentiles", info=HELP["channel_histograms"])
            run, cancel = run_and_cancel("Collect statistics")
        with gr.Column(scale=3):
            status = status_block(session, "One pass over the calibration set: every layer's ranges, percentiles and outlier "
                                           "channels, and which token set each maximum.")
            ranges = result_plot()
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            table = result_table("Layers (click a row to inspect it; sortable)", max_height=380)
        with gr.Column(scale=2):
            outliers = result_table("Top outlier channels (|max| above the threshold)", max_height=380)
    gr.Markdown("### Inspect one layer")
    layer = gr.Dropdown(label="Layer", choices=[], interactive=True)
    attribution = gr.HTML()
    channels = result_plot()
    with gr.Accordion("All channels and distributions", open=False):
        heatmap = result_plot()
        distributions = result_plot()
    build_formats(session, context)
    build_kv_cache(session, context)

    widgets = {"layer_types": layer_types, "pattern": pattern, "include_head": include_head, "capture": capture,
               "percentiles": percentiles, "channel_histograms": channel_histograms, "threshold": threshold,
               "batch_size": batch_size}
    outputs = {"status": status, "ranges": ranges, "table": table, "outliers": outliers, "heatmap": heatmap,
               "distributions": distributions, "layer": layer, "channels": channels, "attribution": attribution,
               "session": session}
    connect(run.click, collect_statistics, StatsForm, widgets, session, outputs, context,
            api_name="collect_statistics", status=status, cancel=cancel, check=check)
    show_layer = layer_view(context)
    layer.input(show_layer, [layer, session], [channels, attribution])
    table.select(pick_from_table, table, layer).then(show_layer, [layer, session], [channels, attribution])
