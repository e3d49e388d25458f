"""Dataset: build a calibration set from the loaded corpus and see exactly what it holds."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd
import torch

from engine.corpus import check_file
from engine.errors import SamplingError
from engine.figures import bucket_bars, length_histogram, selection_scatter
from engine.progress import Progress, no_progress
from engine.sampling import (
    DEFAULT_EDGES,
    MIN_TOKENS,
    REGISTRY,
    Allocation,
    Recipe,
    SamplingSpec,
    Strategy,
    WindowMode,
    build,
    corpus_strategies,
    entry,
    spec_for,
    supplied_set,
)
from engine.specs import labels
from ui.cancel import run_and_cancel
from ui.context import AppContext
from ui.parsing import parse_edges, whole
from ui.state import Session
from ui.widgets import result_plot, result_table, status_block
from ui.wiring import connect, on_field

DEFAULT_STRATEGY = Strategy.LENGTH_STRATIFIED
GPU_DEFAULTS = {"nsamples": 128, "edges": DEFAULT_EDGES}
# On a CPU a first visitor should see every view within about a minute: fewer, shorter samples.
CPU_DEFAULTS = {"nsamples": 32, "edges": (64, 128, 256, 512)}
SUMMARY_BATCH = 8
OPTION_WIDGETS = ("edges", "allocation", "mode", "recipe", "min_tokens")  # per-strategy controls: the registry says which show

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "edges": "Buckets are (previous edge, edge]; longer documents are cut into windows",
    "mode": "joined: wikitext2-style; documents: c4-style rejection",
    "recipe": (
        "a published recipe, reproduced exactly from the same rows and seed (the loaded corpus's "
        "documents are its rows)"
    ),
    "min_tokens": "shorter documents are not drawn",
    "add_bos": "Off reproduces raw-window recipes; Gemma's perplexity is ~2.8x worse without BOS",
}


def first_visit_defaults() -> dict:
    return GPU_DEFAULTS if torch.cuda.is_available() else CPU_DEFAULTS


@dataclass(frozen=True)
class DatasetForm:
    """What the Dataset widgets hold."""

    strategy: str = DEFAULT_STRATEGY.value
    nsamples: float = 32
    length: float = 2048
    edges: str = "64, 128, 256, 512"
    allocation: str = Allocation.EQUAL.value
    mode: str = WindowMode.JOINED.value
    recipe: str = Recipe.CALIBSCOPE.value
    seed: float = 0
    add_bos: bool = True
    chat_template: bool = True
    min_tokens: float = MIN_TOKENS

    def spec(self) -> SamplingSpec:
        """The SamplingSpec these widgets describe (raises SpecError on bad values)."""
        chosen = entry(self.strategy)
        given = {"edges": lambda: parse_edges(self.edges), "allocation": lambda: self.allocation, "mode": lambda: self.mode,
                 "recipe": lambda: self.recipe, "min_tokens": lambda: whole(self.min_tokens)}
        options = {name: value() for name, value in given.items() if name in chosen.options}
        return spec_for(chosen.strategy, nsamples=whole(self.nsamples), length=whole(self.length), seed=whole(self.seed),
                        add_bos=bool(self.add_bos), chat_template=bool(self.chat_template), **options)


def status_line(calibration, seconds: float, verb: str = "Built") -> str:
    s = calibration.summary(SUMMARY_BATCH)
    count = f"{s['samples']:,} samples" + ("" if s["samples"] == s["asked"] else f" (asked {s['asked']:,})")
    line = (f"**{verb}** {count}, {s['tokens']:,} tokens, {s['padding_fraction']:.1%} padding at batch size {SUMMARY_BATCH}, "
            f"{s['truncated_fraction']:.1%} truncated · {seconds:.1f} s")
    notes = "".join(f"\n- {note}" for note in calibration.notes)
    return line + notes


def set_views(calibration, session: Session, tokenizer, seconds: float, verb: str = "Built") -> dict:
    """Every view of a new set, and the session holding it."""
    prefix = len(calibration.manifest.tokenizer["prefix_ids"])
    edges_shown = getattr(calibration.spec, "edges", ())
    has_buckets = calibration.buckets is not None
    second = bucket_bars(calibration.buckets) if has_buckets else None
    if calibration.selection is not None:
        second = selection_scatter(calibration.selection)
    return {
        "status": status_line(calibration, seconds, verb),
        "histogram": length_histogram(calibration.corpus_lengths, calibration.lengths, edges_shown, prefix),
        "second_plot": gr.update(value=second, visible=second is not None),
        "summary": pd.DataFrame(calibration.summary_rows(SUMMARY_BATCH), columns=["Property", "Value"]),
        "bucket_table": gr.update(value=calibration.buckets, visible=has_buckets),
        "preview": calibration.preview(tokenizer),
        "session": session.with_calibration(calibration),
    }


def check_build(form: DatasetForm, context: AppContext) -> None:
    """A spec that cannot be, or a set larger than this app allows: refused before it is queued."""
    spec = on_field("strategy", form.spec)
    on_field("nsamples", lambda: context.limits.check_sampling(spec.nsamples, spec.length))


def build_calibration_set(form: DatasetForm, session: Session, context: AppContext,
                          progress: Progress = no_progress) -> dict:
    """Build the set, keep it in the session, and show it."""
    corpus = session.require_corpus()
    check_build(form, context)
    spec = form.spec()
    loaded = context.model(session)
    started = time.perf_counter()
    calibration = build(corpus, loaded.tokenizer, spec, max_positions=loaded.info.max_positions,
                        corpus_label=session.corpus_spec.label, progress=progress, model=loaded)
    return set_views(calibration, session, loaded.tokenizer, time.perf_counter() - started)


@dataclass(frozen=True)
class WindowsForm:
    windows_file: str | None = None


def check_windows(form: WindowsForm, context: AppContext) -> None:
    if not form.windows_file:
        raise SamplingError("Choose a file of token windows (.parquet, .jsonl or .json with input_ids, .pt or .npy).")
    on_field("windows_file", lambda: check_file(form.windows_file))


def load_token_windows(form: WindowsForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    """Pre-tokenized windows (made by another tool) as the session's calibration set."""
    check_windows(form, context)
    loaded = context.model(session)
    started = time.perf_counter()
    calibration = supplied_set(form.windows_file, loaded.tokenizer, source=Path(form.windows_file).name,
                               max_positions=loaded.info.max_positions)
    context.limits.check_sampling(len(calibration), int(calibration.lengths.max()))
    return set_views(calibration, session, loaded.tokenizer, time.perf_counter() - started, verb="Loaded")


def strategy_controls(strategy: str) -> list:
    """The length field (not for length-stratified), the strategy's own options, and its summary."""
    chosen = entry(strategy)
    uses_length = "length" in chosen.spec_type.field_names()
    length_label = "Sequence length (tokens)" if chosen.exact_length else "Max length (tokens)"
    return [gr.update(visible=uses_length, label=length_label),
            *[gr.update(visible=name in chosen.options) for name in OPTION_WIDGETS],
            gr.update(value=chosen.summary)]


def build_tab(session: gr.State, context: AppContext) -> None:
    """The Dataset tab's widgets and wiring."""
    defaults = first_visit_defaults()
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=320):
            strategy = gr.Radio([s.value for s in corpus_strategies()], value=DEFAULT_STRATEGY.value, label="Strategy")
            help_text = gr.Markdown(REGISTRY[DEFAULT_STRATEGY].summary)
            with gr.Row():
                nsamples = gr.Number(value=defaults["nsamples"], label="Samples", precision=0, minimum=1)
                seed = gr.Number(value=0, label="Seed", precision=0, minimum=0)
            length = gr.Number(value=2048, label="Sequence length (tokens)", precision=0, minimum=2, visible=False)
            edges = gr.Textbox(value=", ".join(str(e) for e in defaults["edges"]), label="Bucket edges (tokens)",
                               info=HELP["edges"])
            allocation = gr.Radio(labels(Allocation), value=Allocation.EQUAL.value, label="Allocation")
            mode = gr.Radio(labels(WindowMode), value=WindowMode.JOINED.value, visible=False,
                            label="GPTQ recipe", info=HELP["mode"])
            recipe = gr.Dropdown(labels(Recipe), value=Recipe.CALIBSCOPE.value, visible=False, label="Whose recipe",
                                 info=HELP["recipe"])
            min_tokens = gr.Number(value=MIN_TOKENS, label="Min tokens per sample", precision=0, minimum=1,
                                   info=HELP["min_tokens"])
            add_bos = gr.Checkbox(value=True, label="Start every sample with BOS, as at inference",
                                  info=HELP["add_bos"])
            chat_template = gr.Checkbox(value=True, label="Apply the chat template to chat data")
            run, cancel = run_and_cancel("Build calibration set")
            with gr.Accordion("Or load token windows made elsewhere", open=False):
                windows_file = gr.File(label="Token windows (input_ids)", type="filepath", height=90,
                                       file_types=[".parquet", ".jsonl", ".json", ".pt", ".npy"], elem_id="windows-file")
                load_windows = gr.Button("Load token windows")
        with gr.Column(scale=2):
            status = status_block(session, "Choose a strategy and build a set from the loaded corpus.")
            histogram = result_plot()
            second_plot = result_plot()
    with gr.Row(equal_height=False):
        summary = result_table("Summary", wrap=True, scale=1)
        bucket_table = result_table("Per bucket", scale=1)
    preview = result_table("Samples (decoded; ⏎ marks a newline)", wrap=True, max_height=420,
                           column_widths=["7%", "7%", "10%", "22%", "54%"])

    strategy.change(strategy_controls, strategy, [length, edges, allocation, mode, recipe, min_tokens, help_text])
    widgets = {"strategy": strategy, "nsamples": nsamples, "length": length, "edges": edges, "allocation": allocation,
               "mode": mode, "seed": seed, "add_bos": add_bos, "chat_template": chat_template, "min_tokens": min_tokens,
               "recipe": recipe}  # last: the API's positional inputs of earlier releases keep their places
    outputs = {"status": status, "histogram": histogram, "second_plot": second_plot, "summary": summary,
               "bucket_table": bucket_table, "preview": preview, "session": session}
    connect(run.click, build_calibration_set, DatasetForm, widgets, session, outputs, context,
            api_name="build_calibration_set", status=status, cancel=cancel, check=check_build)
    connect(load_windows.click, load_token_windows, WindowsForm, {"windows_file": windows_file}, session, outputs, context,
            api_name="load_token_windows", status=status, heavy=False, check=check_windows)
