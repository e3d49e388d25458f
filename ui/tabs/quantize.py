"""Quantize: simulate a scheme with this session's statistics and Hessians, and measure perplexity."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd
import torch

from engine.errors import CalibscopeError
from engine.experiments import HELD_OUT, UPLOADED
from engine.figures.quant import perplexity_runs, sensitivity_depth
from engine.figures.stats import short_name
from engine.progress import Progress, no_progress
from engine.quant import (
    PRESETS,
    ActivationSpec,
    ActOrder,
    Granularity,
    QuantReport,
    QuantSpec,
    RangeMethod,
    Sensitivity,
    WeightMethod,
    WeightSpec,
)
from engine.specs import labels
from ui.cancel import run_and_cancel
from ui.context import AppContext
from ui.parsing import whole
from ui.state import Session
from ui.widgets import context_line, result_plot, result_table
from ui.wiring import connect

CUSTOM = "Custom"
DEFAULT_PRESET = "W4 g128 GPTQ"
GROUPS = {"per channel": 0, "32": 32, "64": 64, "128": 128}
# On a CPU an evaluation must take seconds, not minutes: 8 x 256 tokens (GPU: 32 x 512).
CPU_EVALUATION = (8, 256)
GPU_EVALUATION = (32, 512)
SCHEME_WIDGETS = ("method", "bits", "group", "act_order", "act_bits", "range_method", "percentile", "granularity")


def evaluation_defaults() -> tuple[int, int]:
    return GPU_EVALUATION if torch.cuda.is_available() else CPU_EVALUATION


@dataclass(frozen=True)
class QuantizeForm:
    """What the Quantize widgets hold: the scheme, the held-out text, the sensitivity mode."""

    method: str = WeightMethod.GPTQ.value
    bits: float = 4
    group: str = "128"
    act_order: str = ActOrder.NONE.value
    act_bits: float = 0
    range_method: str = RangeMethod.MINMAX.value
    percentile: float = 99.99
    granularity: str = Granularity.TENSOR.value
    source: str = next(iter(HELD_OUT))
    upload: str | None = None
    length: float = 256
    windows: float = 8
    sensitivity: str = Sensitivity.CHEAP.value

    def spec(self) -> QuantSpec:
        weights = WeightSpec(method=self.method, bits=whole(self.bits), group_size=GROUPS[self.group],
                             act_order=self.act_order)
        activations = ActivationSpec(bits=whole(self.act_bits), range_method=self.range_method,
                                     percentile=float(self.percentile or 0), granularity=self.granularity)
        return QuantSpec(weights, activations)


def preset_widgets(name: str) -> list:
    """The detailed controls showing a preset (left as they are for Custom)."""
    if name not in PRESETS:
        return [gr.update()] * len(SCHEME_WIDGETS)
    w, a = PRESETS[name].weights, PRESETS[name].activations
    group = next(label for label, size in GROUPS.items() if size == w.group_size)
    return [w.method.value, w.bits, group, w.act_order.value, a.bits, a.range_method.value, a.percentile,
            a.granularity.value]


def status_line(report: QuantReport, reused: bool) -> str:
    meta = report.meta
    relative = 100 * report.gap / report.float_perplexity
    verb = "Reused: " if reused else ""
    return (f"{verb}**{report.spec.label()}**: perplexity {report.float_perplexity:.2f} → {report.quantized_perplexity:.2f} "
            f"({report.gap:+.2f}, {relative:+.1f}%) on {meta['evaluation']} ({meta['evaluation_tokens']:,} tokens) · "
            f"{meta['layers']} layers · {meta['seconds']:.1f} s")


def layer_table(report: QuantReport) -> pd.DataFrame:
    table = report.layers.copy()
    table.insert(0, "name", [short_name(layer) for layer in table["layer"]])
    sort = next((c for c in ("perplexity_change", "output_error", "input_error") if c in table), None)
    if sort:
        table = table.sort_values(sort, ascending=False)
    return table.drop(columns=["seconds"]).round(6)


def run_quantization(form: QuantizeForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    session.require_calibration()
    spec = form.spec()
    if spec.needs_hessians and session.hessians is None:
        raise CalibscopeError("GPTQ needs this set's Hessians: collect them in the Hessians tab first (or choose RTN).")
    if spec.needs_stats and session.stats is None:
        raise CalibscopeError("Static activation ranges need statistics: collect them in Activation ranges first.")
    context.limits.check_sampling(whole(form.windows), whole(form.length))
    loaded = context.model(session)
    evaluation = context.evaluations.windows(loaded, form.source, whole(form.length), whole(form.windows), form.upload)
    report, reused = context.evaluations.evaluate(loaded, spec, evaluation, session.stats, session.hessians,
                                                  form.sensitivity, progress=progress)
    session = session.with_run(report)
    return {"status": status_line(report, reused),
            "summary": pd.DataFrame(report.summary_rows(), columns=["", "value"]),
            "runs": perplexity_runs(session.quant_runs), "depth": sensitivity_depth(report),
            "table": layer_table(report), "session": session}


def build_tab(session: gr.State, context: AppContext) -> None:
    windows_default, length_default = evaluation_defaults()
    default = PRESETS[DEFAULT_PRESET]
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            preset = gr.Dropdown([*PRESETS, CUSTOM], value=DEFAULT_PRESET, label="Scheme",
                                 info="GPTQ needs Hessians; static activations need statistics")
            with gr.Accordion("Scheme details", open=False):
                method = gr.Radio(labels(WeightMethod), value=default.weights.method.value, label="Weights")
                bits = gr.Slider(2, 8, value=default.weights.bits, step=1, label="Weight bits")
                group = gr.Dropdown(list(GROUPS), value="128", label="Group size (input columns per scale)")
                act_order = gr.Radio(labels(ActOrder), value=default.weights.act_order.value, label="GPTQ activation order",
                                     info="static: group scales in the original order (llm-compressor 'weight'); "
                                          "dynamic: groups in the permuted order (needs g_idx)")
                act_bits = gr.Radio([0, 8, 6, 4], value=0, label="Activation bits (0 = float)")
                range_method = gr.Radio(labels(RangeMethod), value=RangeMethod.MINMAX.value, label="Activation range")
                percentile = gr.Number(99.99, label="Percentile of |x| (range 'percentile')")
                granularity = gr.Radio(labels(Granularity), value=Granularity.TENSOR.value, label="One range per")
            with gr.Accordion("Evaluation", open=True):
                source = gr.Dropdown([*HELD_OUT, UPLOADED], value=next(iter(HELD_OUT)), label="Held-out text")
                upload = gr.File(label="Held-out text file", type="filepath", height=90, visible=False)
                with gr.Row():
                    length = gr.Number(length_default, label="Window (tokens)", precision=0, minimum=2)
                    windows = gr.Number(windows_default, label="Windows", precision=0, minimum=1)
                sensitivity = gr.Radio(labels(Sensitivity), value=Sensitivity.CHEAP.value, label="Per-layer sensitivity",
                                       info="thorough: one extra evaluation per layer")
            run, cancel = run_and_cancel("Quantize and evaluate")
        with gr.Column(scale=3):
            context_line(session)
            status = gr.Markdown("Quantize (simulated) with this set's Hessians (GPTQ) or statistics (static "
                                 "activations) and measure perplexity against float on held-out text.",
                                 elem_classes="cs-status")
            summary = result_table("Run", show_label=False)
            runs = result_plot()
    depth = result_plot()
    table = result_table("Per layer (sortable)", max_height=380)
    scheme = {"method": method, "bits": bits, "group": group, "act_order": act_order, "act_bits": act_bits,
              "range_method": range_method, "percentile": percentile, "granularity": granularity}
    preset.input(preset_widgets, preset, [scheme[name] for name in SCHEME_WIDGETS])
    source.change(lambda chosen: gr.update(visible=chosen == UPLOADED), source, upload)
    for control in scheme.values():
        control.input(lambda: CUSTOM, None, preset)
    widgets = {**scheme, "source": source, "upload": upload, "length": length, "windows": windows,
               "sensitivity": sensitivity}
    outputs = {"status": status, "summary": summary, "runs": runs, "depth": depth, "table": table, "session": session}
    connect(run.click, run_quantization, QuantizeForm, widgets, session, outputs, context, api_name="quantize",
            status=status, cancel=cancel)
