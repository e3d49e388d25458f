"""Quantize: simulate a scheme with this session's statistics and Hessians, and measure perplexity."""
from __future__ import annotations

from dataclasses import replace

import gradio as gr
import pandas as pd
import torch

from engine import CorpusSpec, load_corpus
from engine.corpus.documents import column
from engine.errors import CalibscopeError
from engine.figures.quant import perplexity_runs, sensitivity_depth
from engine.figures.stats import short_name
from engine.quant import (
    PRESETS,
    SENSITIVITY_MODES,
    ActivationSpec,
    QuantReport,
    QuantSpec,
    WeightSpec,
    evaluate,
    evaluation_windows,
)
from engine.quant.specs import GRANULARITIES, RANGE_METHODS, WEIGHT_METHODS
from engine.specs import BuiltinCorpus
from ui.cache import ResultCache
from ui.cancel import cancel_button, cancellable, wire_cancel
from ui.errors import shown_to_user
from ui.limits import Limits
from ui.state import MODELS, Session

CUSTOM = "Custom"
HELD_OUT = {f"{corpus.value} (held-out 10%)": corpus.value for corpus in BuiltinCorpus}
UPLOADED = "Uploaded file"
GROUPS = {"per channel": 0, "32": 32, "64": 64, "128": 128}
# On a CPU an evaluation must take seconds, not minutes: 8 x 256 tokens (GPU: 32 x 512).
CPU_EVALUATION = (8, 256)
GPU_EVALUATION = (32, 512)
EVALUATIONS = ResultCache(capacity=8)   # (model, source, length, windows) -> EvaluationSet
FLOAT_PERPLEXITY = ResultCache(capacity=64)  # (model, evaluation key) -> float perplexity: deterministic, shareable


def evaluation_defaults() -> tuple[int, int]:
    return GPU_EVALUATION if torch.cuda.is_available() else CPU_EVALUATION


def spec_from_widgets(method, bits, group, act_order, act_bits, range_method, percentile, granularity) -> QuantSpec:
    weights = WeightSpec(method=method, bits=int(bits), group_size=GROUPS[group], act_order=bool(act_order))
    activations = ActivationSpec(bits=int(act_bits or 0), range_method=range_method, percentile=float(percentile or 0),
                                 granularity=granularity)
    return QuantSpec(weights, activations)


def preset_widgets(name: str) -> list:
    """The detailed controls showing a preset (left as they are for Custom)."""
    if name not in PRESETS:
        return [gr.update()] * 8
    spec = PRESETS[name]
    w, a = spec.weights, spec.activations
    group = next(label for label, size in GROUPS.items() if size == w.group_size)
    return [w.method, w.bits, group, w.act_order, a.bits, a.range_method, a.percentile, a.granularity]


def held_out_texts(source: str, upload: str | None) -> list[str]:
    if source == UPLOADED:
        if not upload:
            raise CalibscopeError("Upload a held-out text file (.txt, .jsonl, .csv, .parquet), or choose a builtin held-out part.")
        return column(load_corpus(CorpusSpec.file(upload)), "text")
    if source not in HELD_OUT:
        raise CalibscopeError(f"Unknown evaluation text {source!r}; choose one of the list.")
    return column(load_corpus(CorpusSpec.builtin(HELD_OUT[source], split="test")), "text")


def evaluation_set(session: Session, source: str, upload: str | None, length: int, windows: int, limits: Limits):
    limits.check_sampling(windows, length)
    loaded = MODELS.get(session.model_spec)
    key = (session.model_spec, source, upload, length, windows)
    return EVALUATIONS.get_or_compute(
        key, lambda: evaluation_windows(loaded.tokenizer, held_out_texts(source, upload), length, windows, source))


def status_line(report: QuantReport) -> str:
    meta = report.meta
    relative = 100 * report.gap / report.float_perplexity
    return (f"**{report.spec.label()}**: perplexity {report.float_perplexity:.2f} → {report.quantized_perplexity:.2f} "
            f"({report.gap:+.2f}, {relative:+.1f}%) on {meta['evaluation']} ({meta['evaluation_tokens']:,} tokens) · "
            f"{meta['layers']} layers · {meta['seconds']:.1f} s")


def layer_table(report: QuantReport) -> pd.DataFrame:
    table = report.layers.copy()
    table.insert(0, "name", [short_name(layer) for layer in table["layer"]])
    sort = next((c for c in ("perplexity_change", "output_error", "input_error") if c in table), None)
    if sort:
        table = table.sort_values(sort, ascending=False)
    return table.drop(columns=["seconds"]).round(6)


def run_record(report: QuantReport, number: int) -> dict:
    return {"label": f"#{number} {report.spec.label()}", "float": report.float_perplexity,
            "quantized": report.quantized_perplexity, "evaluation": report.meta["evaluation"]}


def make_handler(limits: Limits):
    @shown_to_user
    def run_quantization(method, bits, group, act_order, act_bits, range_method, percentile, granularity, source, upload,
                         length, windows, sensitivity, session: Session | None, progress=gr.Progress(), request: gr.Request = None):
        session = session or Session()
        session.require_calibration()
        spec = spec_from_widgets(method, bits, group, act_order, act_bits, range_method, percentile, granularity)
        if spec.weights.method == "gptq" and session.hessians is None:
            raise CalibscopeError("GPTQ needs this set's Hessians: collect them in the Hessians tab first (or choose RTN).")
        if spec.activations.enabled and session.stats is None:
            raise CalibscopeError("Static activation ranges need statistics: collect them in Activation ranges first.")
        evaluation = evaluation_set(session, source, upload, int(length or 0), int(windows or 0), limits)
        loaded = MODELS.get(session.model_spec)
        float_key = (session.model_spec, evaluation.key)
        report = evaluate(loaded, spec, evaluation, session.stats, session.hessians, sensitivity,
                          float_perplexity=FLOAT_PERPLEXITY.peek(float_key), progress=cancellable(progress, request))
        FLOAT_PERPLEXITY.put(float_key, report.float_perplexity)
        runs = [*session.quant_runs, run_record(report, len(session.quant_runs) + 1)]
        session = replace(session, quantization=report, quant_runs=runs)
        return (status_line(report), pd.DataFrame(report.summary_rows(), columns=["", "value"]), perplexity_runs(runs),
                sensitivity_depth(report), layer_table(report), session)

    return run_quantization


def build_tab(session: gr.State, limits: Limits) -> None:
    windows_default, length_default = evaluation_defaults()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            preset = gr.Dropdown([*PRESETS, CUSTOM], value="W4 g128 GPTQ", label="Scheme",
                                 info="GPTQ needs Hessians; static activations need statistics")
            with gr.Accordion("Scheme details", open=False):
                method = gr.Radio(list(WEIGHT_METHODS), value="gptq", label="Weights")
                bits = gr.Slider(2, 8, value=4, step=1, label="Weight bits")
                group = gr.Dropdown(list(GROUPS), value="128", label="Group size (input columns per scale)")
                act_order = gr.Checkbox(False, label="GPTQ activation order")
                act_bits = gr.Radio([0, 8, 6, 4], value=0, label="Activation bits (0 = float)")
                range_method = gr.Radio(list(RANGE_METHODS), value="minmax", label="Activation range")
                percentile = gr.Number(99.99, label="Percentile of |x| (range 'percentile')")
                granularity = gr.Radio(list(GRANULARITIES), value="tensor", label="One range per")
            with gr.Accordion("Evaluation", open=True):
                source = gr.Dropdown([*HELD_OUT, UPLOADED], value=next(iter(HELD_OUT)), label="Held-out text")
                upload = gr.File(label="Held-out text file", type="filepath", height=90, visible=False)
                with gr.Row():
                    length = gr.Number(length_default, label="Window (tokens)", precision=0, minimum=2)
                    windows = gr.Number(windows_default, label="Windows", precision=0, minimum=1)
                sensitivity = gr.Radio(list(SENSITIVITY_MODES), value="cheap", label="Per-layer sensitivity",
                                       info="thorough: one extra evaluation per layer")
            with gr.Row():
                run = gr.Button("Quantize and evaluate", variant="primary", scale=3)
                cancel = cancel_button()
        with gr.Column(scale=3):
            status = gr.Markdown("Build a calibration set, collect Hessians (GPTQ) or statistics (static activations), "
                                 "then quantize.", elem_classes="cs-status")
            summary = gr.Dataframe(headers=["", "value"], interactive=False, show_label=False)
            runs = gr.Plot(show_label=False)
    depth = gr.Plot(show_label=False)
    table = gr.Dataframe(label="Per layer, most sensitive first (sortable)", interactive=False, max_height=380)
    details = [method, bits, group, act_order, act_bits, range_method, percentile, granularity]
    preset.input(preset_widgets, preset, details)
    source.change(lambda chosen: gr.update(visible=chosen == UPLOADED), source, upload)
    for control in details:
        control.input(lambda: CUSTOM, None, preset)
    event = run.click(make_handler(limits), [*details, source, upload, length, windows, sensitivity, session],
              [status, summary, runs, depth, table, session], show_progress_on=[status], concurrency_id="heavy",
              api_name="quantize")
    wire_cancel(cancel, event, status)
