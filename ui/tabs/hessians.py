"""Hessians: GPTQ's H = 2/N Σ XᵀX for every layer, and whether the calibration set is enough."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import gradio as gr
import pandas as pd

from engine.errors import CalibscopeError
from engine.figures import diagonal_heatmap, eigen_spectrum, hessian_depth, short_name
from engine.hooks import select_layers
from engine.progress import Progress, no_progress
from engine.specs import labels
from engine.stats import (
    HESSIAN_FINDINGS,
    NO_HESSIAN_FINDING,
    HessianReport,
    HessianSpec,
    Precision,
    Storage,
    collect_hessians,
    hessian_megabytes,
    hessian_memory_plan,
    hessians_from_sums,
)
from ui.cancel import run_and_cancel
from ui.context import AppContext
from ui.errors import shown_to_user
from ui.estimates import timed_step
from ui.parsing import whole
from ui.state import Session
from ui.tables import number, shown
from ui.widgets import result_plot, result_table, status_block
from ui.wiring import connect, on_field

SHOWN_WARNINGS = 8

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "storage": "cpu: host memory, for a model on a GPU that is short of memory",
    "layer": "Opens on the least well-conditioned layer",
}


@dataclass(frozen=True)
class HessianForm:
    """What the Hessians widgets hold."""

    pattern: str = ""
    dtype: str = Precision.FLOAT32.value
    storage: str = Storage.MODEL.value
    batch_size: float = 8

    def spec(self) -> HessianSpec:
        return HessianSpec(name_pattern=(self.pattern or "").strip(), dtype=self.dtype, storage=self.storage,
                           batch_size=whole(self.batch_size))


def status_line(report: HessianReport, reused: bool = False) -> str:
    meta = report.meta
    verb = "**Reused** (same set and settings as your last run):" if reused else "**Collected**"
    how = meta["plan"]["execution"] if meta.get("plan") else "summed by the Sensitivity sweep's pass, only diagnosed now"
    line = (f"{verb} Hessians of {meta['layers']} layers ({meta['distinct']} distinct inputs: "
            f"{meta['memory_mb']:,.1f} MB instead of {meta['memory_without_sharing_mb']:,.1f} MB without sharing) "
            f"over {meta['tokens']:,} tokens · {how} · {meta['seconds']:.1f} s")
    findings = {kind: layers for kind, layers in report.findings().items() if layers}
    if not findings:
        return line + f"\n- {NO_HESSIAN_FINDING}: this set is enough for GPTQ here."
    bullets = []
    for kind, layers in findings.items():
        named = ", ".join(short_name(layer) for layer in layers[:SHOWN_WARNINGS])
        more = f" and {len(layers) - SHOWN_WARNINGS} more" if len(layers) > SHOWN_WARNINGS else ""
        bullets.append(f"\n- **{len(layers)}** of {meta['distinct']} {HESSIAN_FINDINGS[kind]}: {named}{more}")
    return line + "".join(bullets) + "\n\nEach layer's full diagnosis is in the table's *warning* column."


def diagnostics_table(report: HessianReport) -> pd.DataFrame:
    """One row per layer: short headers, numbers formatted, the finding in a word; the full sentence last."""
    table = report.diagnostics.copy()
    findings = report.finding_of()
    table.insert(0, "name", [short_name(layer) for layer in table["layer"]])
    table["finding"] = [findings.get(source or layer, "") for layer, source in zip(table["layer"], table["shared_with"])]
    table["shared_with"] = [short_name(k) if k else "" for k in table["shared_with"]]
    columns = ["name", "channels", "tokens", "rank", "dead_channels", "condition_number", "min_damping", "trace",
               "finding", "shared_with", "warning"]
    damping = {"min_damping": lambda d: "fails" if d is None or math.isnan(d) else f"{d:g}"}
    return shown(table[[c for c in columns if c in table]],
                 {"tokens": ",d", "condition_number": ".2e", "trace": ".4g", "rank": lambda r: number(r, ".0f"), **damping},
                 headers={"dead_channels": "dead", "condition_number": "condition", "min_damping": "min damping",
                          "shared_with": "input of", "warning": "diagnosis"})


def check(form: HessianForm, context: AppContext) -> None:
    spec = on_field("pattern", form.spec)
    on_field("batch_size", lambda: context.limits.check_batch(spec.batch_size))


def compute_hessians(form: HessianForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    calibration = session.require_calibration()
    check(form, context)
    spec = form.spec()
    loaded = context.model(session)
    report = session.reusable_hessians(spec)
    reused = report is not None
    if not reused:
        layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, spec.include_head)
        context.limits.check_hessian_memory(hessian_megabytes(layers, spec.dtype))
        sums = session.sweep_sums(spec)
        if sums is not None:  # the sweep's pass already summed them: diagnose only
            report = hessians_from_sums(loaded, calibration, spec, *sums, progress=progress)
        else:
            with timed_step(context.times, loaded, "hessians", int(calibration.lengths.sum()), progress):
                report = collect_hessians(loaded, calibration, spec, progress=progress)
    worst = report.diagnostics.sort_values(["rank", "condition_number"], ascending=[True, False])["layer"].iloc[0]
    return {"status": status_line(report, reused), "depth": hessian_depth(report), "table": diagnostics_table(report),
            "layer": gr.update(choices=list(report.diagnostics["layer"]), value=worst),
            "spectrum": eigen_spectrum(report, worst), "diagonals": diagonal_heatmap(report),
            "session": replace(session, hessians=report)}


def plan_markdown(plan) -> str:
    rows = "".join(f"\n| {item.what} | {item.megabytes:,.1f} MB | {item.where} |" for item in plan.items)
    return (f"**Memory plan: {plan.execution.value}** on {plan.device} ({plan.reason})\n\n| holds | size | where |"
            f"\n|---|---:|---|{rows}")


def plan_view(context: AppContext):
    """The memory plan the current settings would follow, shown before the run (empty until there is a set)."""

    def preview(session: Session | None, pattern: str, dtype: str, storage: str, batch_size: float) -> str:
        session = session or Session()
        if session.calibration is None:
            return ""
        try:
            spec = HessianForm(pattern, dtype, storage, batch_size).spec()
            return plan_markdown(hessian_memory_plan(context.model(session), session.calibration, spec))
        except CalibscopeError as error:  # an unfinished pattern while typing: say so, quietly
            return f"Memory plan: {error}"

    return preview


@shown_to_user
def show_spectrum(layer: str, session: Session | None):
    report = (session or Session()).require("hessians")
    if not layer:
        raise gr.Error("Choose a layer.")
    return eigen_spectrum(report, layer)


def build_tab(session: gr.State, context: AppContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            pattern = gr.Textbox(label="Layer name filter (regular expression)",
                                 placeholder="all quantizable layers but the head")
            dtype = gr.Radio(labels(Precision), value=Precision.FLOAT32.value, label="Accumulate in")
            storage = gr.Radio(labels(Storage), value=Storage.MODEL.value, label="Keep Hessians on",
                               info=HELP["storage"])
            batch_size = gr.Number(value=8, label="Batch size", precision=0, minimum=1)
            run, cancel = run_and_cancel("Collect Hessians")
        with gr.Column(scale=3):
            status = status_block(session, "GPTQ's H = 2/N Σ XᵀX for every layer's input, and whether the set is enough: "
                                           "rank, conditioning, dead channels, the damping a Cholesky needs.")
            with gr.Accordion("Memory plan", open=False):
                plan = gr.Markdown()
            depth = result_plot()
    table = result_table("Per layer (sortable)", wrap=True, max_height=380,
                         column_widths=["8%", "6%", "6%", "5%", "4%", "8%", "6%", "6%", "9%", "7%", "35%"])
    with gr.Row(equal_height=False):
        with gr.Column():
            layer = gr.Dropdown(label="Layer", choices=[], interactive=True, info=HELP["layer"])
            spectrum = result_plot()
        with gr.Column():
            diagonals = result_plot()
    widgets = {"pattern": pattern, "dtype": dtype, "storage": storage, "batch_size": batch_size}
    outputs = {"status": status, "depth": depth, "table": table, "layer": layer, "spectrum": spectrum,
               "diagonals": diagonals, "session": session}
    connect(run.click, compute_hessians, HessianForm, widgets, session, outputs, context,
            api_name="compute_hessians", status=status, cancel=cancel, check=check)
    layer.input(show_spectrum, [layer, session], spectrum)
    preview = plan_view(context)
    settings = [session, pattern, dtype, storage, batch_size]
    for trigger in (session.change, pattern.submit, dtype.change, storage.change, batch_size.change):
        trigger(preview, settings, plan, queue=False, show_progress="hidden")
