"""Sensitivity: is this many samples enough? Snapshots of ranges and Hessians at growing counts."""
from __future__ import annotations

from dataclasses import dataclass, replace

import gradio as gr
import pandas as pd

from engine.experiments import SweepResult, SweepSpec, snapshot_megabytes, sweep
from engine.figures import SWEEP_METRICS, sweep_curves
from engine.progress import Progress, no_progress
from ui.cancel import run_and_cancel
from ui.context import AppContext
from ui.estimates import timed_step
from ui.parsing import parse_counts, whole
from ui.state import Session
from ui.widgets import result_plot, result_table, status_block
from ui.wiring import connect, on_field

CLOSE_ENOUGH = 0.05  # "within 5% of the full set"

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "hessians": "block by block: one bfloat16 copy per shuffle and count",
}


@dataclass(frozen=True)
class SweepForm:
    """What the Sensitivity widgets hold."""

    counts: str = ""
    shuffles: float = 3
    percentile: float = 99.99
    hessians: bool = True
    batch_size: float = 8

    def spec(self) -> SweepSpec:
        return SweepSpec(counts=parse_counts(self.counts), shuffles=whole(self.shuffles),
                         percentile=float(self.percentile or 0), hessians=bool(self.hessians),
                         batch_size=whole(self.batch_size), keep_totals=bool(self.hessians))  # the Hessians tab reuses them


def enough_at(result: SweepResult, metric: str, tolerance: float = CLOSE_ENOUGH) -> int | None:
    """The smallest count from which every shuffle's median change stays within ``tolerance``."""
    curve = result.curves(metric)
    within = curve["high"] <= tolerance
    for index in range(len(curve)):
        if within.iloc[index:].all():
            return int(curve["count"].iloc[index])
    return None


def status_line(result: SweepResult) -> str:
    meta = result.meta
    parts = []
    for column, (name, _) in SWEEP_METRICS.items():
        if column in result.rows:
            found = enough_at(result, column)
            parts.append(f"{name} within {CLOSE_ENOUGH:.0%} of the full set from **{found} samples**"
                         if found and found < result.counts[-1]
                         else f"{name} still moving at {result.counts[-1]} samples (more data would change it)")
    if result.totals:
        parts.append("The whole set's Hessians are kept: the Hessians tab diagnoses them without another pass.")
    return (f"**Swept** {meta['samples']} samples, {meta['shuffles']} shuffles, {meta['inputs']} distinct inputs · "
            f"{meta['seconds']:.1f} s\n- " + "\n- ".join(parts))


def sweep_table(result: SweepResult) -> pd.DataFrame:
    """Per count, each metric's mean over shuffles with the band, as readable text."""
    table = pd.DataFrame({"samples": result.counts})
    for column, (name, _) in SWEEP_METRICS.items():
        if column in result.rows:
            curve = result.curves(column)
            table[name] = [f"{m:.2%} ({lo:.2%}–{hi:.2%})" for m, lo, hi in zip(curve["mean"], curve["low"], curve["high"])]
    return table


def check(form: SweepForm, context: AppContext) -> None:
    spec = on_field("counts", form.spec)
    on_field("batch_size", lambda: context.limits.check_batch(spec.batch_size))


def run_sweep(form: SweepForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    calibration = session.require_calibration()
    check(form, context)
    spec = form.spec()
    loaded = context.model(session)
    context.limits.check_hessian_memory(snapshot_megabytes(loaded, spec, len(calibration)))
    with timed_step(context.times, loaded, "sweep", int(calibration.lengths.sum()), progress):  # one pass, any shuffles
        result = sweep(loaded, calibration, spec, progress=progress)
    return {"status": status_line(result), "curves": sweep_curves(result), "table": sweep_table(result),
            "session": replace(session, sweep=result)}


def build_tab(session: gr.State, context: AppContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("Is this set big enough? One pass snapshots the ranges, percentiles and Hessians of the "
                        "first n samples of several shuffles and measures how far each still is from the full set.")
            counts = gr.Textbox(label="Sample counts", placeholder="1, 2, 4, ... up to the set (default)")
            shuffles = gr.Slider(1, 8, value=3, step=1, label="Shuffles (the band; all from one pass)")
            percentile = gr.Number(99.99, label="Percentile of |x|")
            hessians = gr.Checkbox(True, label="Hessians too", info=HELP["hessians"])
            batch_size = gr.Number(8, label="Batch size", precision=0, minimum=1)
            run, cancel = run_and_cancel("Run sweep")
        with gr.Column(scale=3):
            status = status_block(session, "How far the ranges, percentiles and Hessians of the first n samples still are from "
                                           "those of the whole set.")
            curves = result_plot()
    table = result_table("Median change to the full set: mean over shuffles (min–max)")
    widgets = {"counts": counts, "shuffles": shuffles, "percentile": percentile, "hessians": hessians,
               "batch_size": batch_size}
    outputs = {"status": status, "curves": curves, "table": table, "session": session}
    connect(run.click, run_sweep, SweepForm, widgets, session, outputs, context, api_name="sweep", status=status,
            cancel=cancel, check=check)
