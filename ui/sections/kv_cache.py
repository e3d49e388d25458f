"""Activation ranges tab, the KV cache: what each attention layer caches, per KV head, what an FP8
cache's range methods would set, and how far along the sequence the keys reach their range. One
forward of the calibration set; the Quantize tab's KV cache option reuses what it collects."""
from __future__ import annotations

from dataclasses import dataclass, replace

import gradio as gr
import pandas as pd

from engine.figures import kv_cache_ranges, position_share, short_name
from engine.progress import Progress, no_progress
from engine.quant import KV_METHODS, kv_method_ranges
from engine.stats import KVReport, collect_kv
from ui.context import AppContext
from ui.estimates import timed_step
from ui.state import Session
from ui.tables import shown
from ui.widgets import result_plot, result_table
from ui.wiring import connect


@dataclass(frozen=True)
class KVForm:
    """The section has no settings of its own: it reads the session's calibration set."""


def summary(report: KVReport, methods: pd.DataFrame) -> str:
    """What the figure says, in three lines."""
    keys, values = (methods[methods["tensor"] == tensor] for tensor in ("key", "value"))
    share, labels = position_share(report)
    widest = keys.loc[keys["absmax"].idxmax()]
    ranges = ", ".join(f"{label} {keys[label].median():.2f} / {values[label].median():.2f}" for label in KV_METHODS)
    heads = report.meta["kv_heads"]
    lines = [(f"**KV cache on this set**: {len(report.layers)} attention layers, {heads} KV head{'s' * (heads != 1)}, "
              f"{report.meta['tokens']:,} tokens. Keys reach |max| {keys['absmax'].min():.3g}-{keys['absmax'].max():.3g} "
              f"(widest: {short_name(widest['layer'])}), values {values['absmax'].min():.3g}-{values['absmax'].max():.3g}."),
             f"- FP8 ranges as multiples of |max| (median over layers, keys / values): {ranges}"]
    if len(labels) > 1:
        first = share[0]
        late = share[-1]
        lines.append(f"- Positions: the first token alone reaches a mean {first.mean():.2f}x of the keys' |max|; "
                     f"{labels[-1]} reach {late.mean():.2f}x. A set shorter than the text served never sees the later "
                     "positions' keys: calibrate on samples as long as the context you serve.")
    return "\n".join(lines)


def collect_kv_cache(form: KVForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    calibration = session.require_calibration()
    loaded = context.model(session)
    with timed_step(context.times, loaded, "kv_cache", int(calibration.lengths.sum()), progress):
        report = collect_kv(loaded, calibration, progress=progress)
    methods = kv_method_ranges(report)
    table = report.summary().assign(layer=lambda frame: [short_name(name) for name in frame["layer"]])
    formats = {column: ".4g" for column in table if column.startswith(("absmax", "p99"))}
    return {"status": summary(report, methods), "figure": kv_cache_ranges(report, methods),
            "table": shown(table.drop(columns=["block"]), formats), "session": replace(session, kv_cache=report)}


def build_section(session: gr.State, context: AppContext) -> None:
    gr.Markdown("### KV cache\nThe keys (after the key norm and the rotary embedding) and values each attention layer "
                "caches, per KV head, as an FP8 KV cache would quantize them: their ranges, what each range method "
                "would set, and which positions reach them. Choose the KV cache in the Quantize tab.")
    run = gr.Button("Collect KV cache statistics")
    status = gr.Markdown("", elem_classes="cs-status")
    figure = result_plot()
    table = result_table("Per layer, tensor and KV head (|max| by position; sortable)", max_height=320)
    connect(run.click, collect_kv_cache, KVForm, {}, session, {"status": status, "figure": figure, "table": table,
                                                               "session": session}, context,
            api_name="kv_cache", status=status)
