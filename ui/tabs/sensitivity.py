"""Sensitivity: is this many samples enough? Snapshots of ranges and Hessians at growing counts."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from engine.errors import SpecError
from engine.figures.selection import SWEEP_METRICS, sweep_curves
from engine.stats.hessian_report import hessian_megabytes
from engine.stats.passes import select_layers
from engine.stats.sweep import SweepResult, SweepSpec, sweep
from ui.cancel import cancel_button, cancellable, wire_cancel
from ui.errors import shown_to_user, with_limits
from ui.limits import Limits
from ui.state import MODELS, Session

CLOSE_ENOUGH = 0.05  # "within 5% of the full set"


def parse_counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in (text or "").replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise SpecError(f"Sample counts {text!r} must be whole numbers separated by commas, e.g. 1, 4, 16, 64.") from None


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
            parts.append(f"{name} within {CLOSE_ENOUGH:.0%} of the full set from **{found} samples**" if found and found < result.counts[-1]
                         else f"{name} still moving at {result.counts[-1]} samples (more data would change it)")
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


@shown_to_user
def run_sweep(counts, shuffles, percentile, hessians, batch_size, session: Session | None, progress=gr.Progress(),
              request: gr.Request = None, *, limits: Limits = Limits()):
    session = session or Session()
    calibration = session.require_calibration()
    spec = SweepSpec(counts=parse_counts(counts), shuffles=int(shuffles or 0), percentile=float(percentile or 0),
                     hessians=bool(hessians), batch_size=int(batch_size or 0))
    loaded = MODELS.get(session.model_spec)
    if spec.hessians:
        layers = select_layers(loaded.model, spec.layer_types, spec.name_pattern, False)
        snapshots = len(spec.resolved_counts(len(calibration)))
        limits.check_hessian_memory(hessian_megabytes(layers, "float32") / 2 * snapshots)  # bfloat16 copies
    result = sweep(loaded, calibration, spec, progress=cancellable(progress, request))
    return status_line(result), sweep_curves(result), sweep_table(result)


def build_tab(session: gr.State, limits: Limits) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("Is this set big enough? One shuffled pass snapshots the ranges, percentiles and Hessians "
                        "at growing sample counts and measures how far each still is from the full set.")
            counts = gr.Textbox(label="Sample counts", placeholder="1, 2, 4, ... up to the set (default)")
            shuffles = gr.Slider(1, 8, value=3, step=1, label="Shuffles (one pass each; the band)")
            percentile = gr.Number(99.99, label="Percentile of |x|")
            hessians = gr.Checkbox(True, label="Hessians too", info="one bfloat16 copy per count")
            batch_size = gr.Number(8, label="Batch size", precision=0, minimum=1)
            with gr.Row():
                run = gr.Button("Run sweep", variant="primary", scale=3)
                cancel = cancel_button()
        with gr.Column(scale=3):
            status = gr.Markdown("Build a calibration set, then run a sweep.", elem_classes="cs-status")
            curves = gr.Plot(show_label=False)
    table = gr.Dataframe(label="Median change to the full set: mean over shuffles (min–max)", interactive=False)
    event = run.click(with_limits(run_sweep, limits), [counts, shuffles, percentile, hessians, batch_size, session],
                      [status, curves, table], show_progress_on=[status], concurrency_id="heavy", api_name="sweep")
    wire_cancel(cancel, event, status)
