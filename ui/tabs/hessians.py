"""Hessians: GPTQ's H = 2/N Σ XᵀX for every layer, and whether the calibration set is enough."""
from __future__ import annotations

from dataclasses import replace

import gradio as gr
import pandas as pd

from engine.figures import diagonal_heatmap, eigen_spectrum, hessian_depth
from engine.figures.stats import short_name
from engine.stats.hessian_report import (
    HessianReport,
    collect_hessians,
    hessian_megabytes,
)
from engine.stats.passes import select_layers
from engine.stats.specs import HessianSpec
from ui.cancel import cancel_button, cancellable, wire_cancel
from ui.errors import shown_to_user, with_limits
from ui.limits import Limits
from ui.state import MODELS, Session

SHOWN_WARNINGS = 8


FINDINGS = {
    "data_limited": "have fewer tokens than input channels: add calibration data",
    "needs_damping": "need damping before a float32 Cholesky succeeds (GPTQ's default is 0.01)",
    "dead_channels": "have input channels that are never active (GPTQ sets their diagonal to 1)",
    "float32_rank": "are rank-deficient in float32 although they saw more tokens than channels: uneven channel "
                    "energy or fewer independent directions than channels (damping handles it; more data of the "
                    "same kind does not)",
}


def status_line(report: HessianReport, reused: bool = False) -> str:
    meta = report.meta
    verb = "**Reused** (same set and settings as your last run):" if reused else "**Collected**"
    line = (f"{verb} Hessians of {meta['layers']} layers ({meta['distinct']} distinct inputs: "
            f"{meta['memory_mb']:,.1f} MB instead of {meta['memory_without_sharing_mb']:,.1f} MB without sharing) "
            f"over {meta['tokens']:,} tokens · pass {meta['pass_seconds']:.1f} s, total {meta['seconds']:.1f} s")
    findings = {kind: layers for kind, layers in report.findings().items() if layers}
    if not findings:
        return line + "\n- Every Hessian is full rank and factorizes without damping: this set is enough for GPTQ here."
    bullets = []
    for kind, layers in findings.items():
        named = ", ".join(short_name(layer) for layer in layers[:SHOWN_WARNINGS])
        more = f" and {len(layers) - SHOWN_WARNINGS} more" if len(layers) > SHOWN_WARNINGS else ""
        bullets.append(f"\n- **{len(layers)}** of {meta['distinct']} {FINDINGS[kind]}: {named}{more}")
    return line + "".join(bullets) + "\n\nEach layer's full diagnosis is in the table's *warning* column."


def diagnostics_table(report: HessianReport) -> pd.DataFrame:
    table = report.diagnostics.copy()
    table.insert(0, "name", [short_name(layer) for layer in table["layer"]])
    table["shared_with"] = [short_name(k) if k else "" for k in table["shared_with"]]
    columns = ["name", "channels", "tokens", "rank", "dead_channels", "condition_number", "min_damping", "trace",
               "shared_with", "warning", "layer"]
    return table[[c for c in columns if c in table]].round({"trace": 4, "mean_diagonal": 6})


@shown_to_user
def compute_hessians(pattern, dtype, storage, batch_size, session: Session | None, progress=gr.Progress(),
                     request: gr.Request = None, *, limits: Limits = Limits()):
    session = session or Session()
    calibration = session.require_calibration()
    spec = HessianSpec(name_pattern=(pattern or "").strip(), dtype=dtype, storage=storage, batch_size=int(batch_size or 0))
    loaded = MODELS.get(session.model_spec)
    report = session.reusable_hessians(spec)
    reused = report is not None
    if not reused:
        layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, spec.include_head)
        limits.check_hessian_memory(hessian_megabytes(layers, spec.dtype))
        report = collect_hessians(loaded, calibration, spec, progress=cancellable(progress, request))
    worst = report.diagnostics.sort_values(["rank", "condition_number"], ascending=[True, False])["layer"].iloc[0]
    return (status_line(report, reused), hessian_depth(report), diagnostics_table(report),
            gr.update(choices=list(report.diagnostics["layer"]), value=worst), eigen_spectrum(report, worst),
            diagonal_heatmap(report), replace(session, hessians=report))


@shown_to_user
def show_spectrum(layer: str, session: Session | None):
    report = (session or Session()).require_hessians()
    if not layer:
        raise gr.Error("Choose a layer.")
    return eigen_spectrum(report, layer)


def build_tab(session: gr.State, limits: Limits) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            pattern = gr.Textbox(label="Layer name filter (regular expression)", placeholder="all quantizable layers but the head")
            dtype = gr.Radio(["float32", "float64"], value="float32", label="Accumulate in")
            storage = gr.Radio(["model", "cpu"], value="model", label="Keep Hessians on",
                               info="cpu: host memory, for a model on a GPU that is short of memory")
            batch_size = gr.Number(value=8, label="Batch size", precision=0, minimum=1)
            with gr.Row():
                run = gr.Button("Collect Hessians", variant="primary", scale=3)
                cancel = cancel_button()
        with gr.Column(scale=3):
            status = gr.Markdown("Build a calibration set, then collect Hessians.", elem_classes="cs-status")
            depth = gr.Plot(show_label=False)
    table = gr.Dataframe(label="Per layer (sortable)", interactive=False, wrap=True, max_height=380)
    with gr.Row(equal_height=False):
        with gr.Column():
            layer = gr.Dropdown(label="Layer", choices=[], interactive=True, info="Opens on the least well-conditioned layer")
            spectrum = gr.Plot(show_label=False)
        with gr.Column():
            diagonals = gr.Plot(show_label=False)
    event = run.click(with_limits(compute_hessians, limits), [pattern, dtype, storage, batch_size, session],
              [status, depth, table, layer, spectrum, diagonals, session],
              show_progress_on=[status], concurrency_id="heavy", api_name="compute_hessians")
    wire_cancel(cancel, event, status)
    layer.input(show_spectrum, [layer, session], spectrum)
