"""Imatrix: llama.cpp importance matrices of the calibration set (or of a text file, chunked as
llama-imatrix chunks it), inspected, compared with another one (a file from llama-imatrix), exported."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import pandas as pd

from engine.errors import CalibscopeError
from engine.figures import (
    channel_importance,
    comparison_figure,
    concentration,
    concentration_heatmap,
    expert_counts,
    top_channels,
)
from engine.imatrix import (
    Imatrix,
    ImatrixSpec,
    collect_imatrix,
    compare_imatrices,
    llama_text_set,
    precision_note,
    read_imatrix,
    write_imatrix,
)
from engine.progress import Progress, no_progress
from ui.cancel import run_and_cancel
from ui.context import AppContext
from ui.errors import shown_to_user
from ui.estimates import timed_step
from ui.parsing import whole
from ui.sections.imatrix_gguf import build_section
from ui.state import Session
from ui.tables import shown
from ui.widgets import result_plot, result_table, status_block
from ui.wiring import Invalid, connect, on_field

CURRENT_SET, TEXT_FILE = "the calibration set", "a text file, chunked as llama-imatrix does"
MATRIX_VIEWS = ("heatmap", "experts", "tensor", "channels", "top", "downloads")
UNDER_CALIBRATED = 64  # tokens an expert needs before its importances mean anything (the threshold drawn)

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "chunk_size": "legacy files store means, not token counts",
    "tensor": "Opens on the tensor whose top channel stands out most",
}


@dataclass(frozen=True)
class CollectForm:
    source: str = CURRENT_SET
    text_file: str | None = None
    n_ctx: float = 512
    chunks: float = 32
    include_output: bool = False
    batch_size: float = 8


@dataclass(frozen=True)
class LoadForm:
    imatrix_file: str | None = None
    chunk_size: float = 512


@dataclass(frozen=True)
class CompareForm:
    first: str = ""
    second: str = ""


def label_for(session: Session, what: str) -> str:
    return f"#{len(session.imatrices) + 1} {what}"


def summary_line(label: str, imatrix: Imatrix) -> str:
    table = concentration(imatrix)
    worst = table.sort_values("max_over_median").iloc[-1] if len(table) else None
    if imatrix.chunk_size:
        line = f"**{label}**: {len(imatrix):,} tensors over {imatrix.tokens:,} tokens"
    else:
        line = (f"**{label}**: {len(imatrix):,} tensors over {imatrix.chunk_count:,} chunks "
                "(a legacy file: token counts are nominal)")
    if worst is not None:
        line += (f" · the most concentrated tensor is **{worst['tensor']}**: channel {worst['top_channel']} "
                 f"is {worst['max_over_median']:,.0f}× the median channel")
    unused = imatrix.unused_experts()
    if unused:
        line += (f"\n- **{sum(map(len, unused.values())):,} experts received no token** in {len(unused)} tensors: "
                 "add data or route-all calibration.")
    return line


def matrix_views(session: Session, label: str) -> dict:
    """The figures of one matrix, opened on its most concentrated tensor, and its downloads."""
    imatrix = session.require_imatrix(label)
    tensor = concentration(imatrix).sort_values("max_over_median")["tensor"].iloc[-1]
    return {"heatmap": concentration_heatmap(imatrix), "experts": expert_counts(imatrix, UNDER_CALIBRATED),
            "tensor": gr.update(choices=imatrix.names(), value=tensor),
            "channels": channel_importance(imatrix, tensor, labels=(label, "")),
            "top": shown_top(imatrix, tensor), "downloads": downloads(session, label)}


def views(session: Session, label: str) -> dict:
    """A new matrix shown, and offered for comparison with the one before it."""
    names = list(session.imatrices)
    other = names[-2] if len(names) > 1 else names[-1]
    return {**matrix_views(session, label), "first": gr.update(choices=names, value=label),
            "second": gr.update(choices=names, value=other)}


@shown_to_user
def switch_matrix(label: str, session: Session | None):
    found = matrix_views(session or Session(), label)
    return [found[name] for name in MATRIX_VIEWS]


def shown_top(imatrix: Imatrix, tensor: str) -> pd.DataFrame:
    return shown(top_channels(imatrix, tensor), {"mean x²": ".4g", "× median": ",.1f"})


def downloads(session: Session, label: str) -> list[str]:
    """The matrix as llama.cpp reads it: GGUF and legacy .dat (for older llama.cpp builds)."""
    imatrix = session.imatrices[label]
    files = []
    for suffix in ("gguf", "dat"):
        if suffix == "dat" and not imatrix.chunk_size:
            continue
        path, _ = session.exports.file(f"imatrix-{suffix}", label,
                                       lambda folder, s=suffix: write_imatrix(imatrix, folder / f"imatrix.{s}"))
        files.append(str(path))
    return files


def check_collect(form: CollectForm, context: AppContext) -> None:
    on_field("batch_size", lambda: context.limits.check_batch(whole(form.batch_size)))
    if form.source == TEXT_FILE:
        if not form.text_file:
            raise Invalid("text_file", "Choose a text file to chunk (the file you would give llama-imatrix with -f).")
        on_field("text_file", lambda: context.guard.upload(form.text_file, "text file"))
        on_field("chunks", lambda: context.limits.check_sampling(whole(form.chunks), whole(form.n_ctx)))


def collect(form: CollectForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    check_collect(form, context)
    loaded = context.model(session)
    if form.source == TEXT_FILE:
        n_ctx, chunks = whole(form.n_ctx), whole(form.chunks)
        calibration = llama_text_set(loaded.tokenizer, form.text_file, n_ctx, chunks, loaded.info.max_positions)
        what = f"{Path(form.text_file).name}, {len(calibration)} chunks of {n_ctx}"
    else:
        calibration = session.require_calibration()
        what = f"{calibration.manifest.strategy}, {len(calibration)} samples ({calibration.manifest.token_sha256[:8]})"
    with timed_step(context.times, loaded, "imatrix", int(calibration.lengths.sum()), progress):
        imatrix = collect_imatrix(loaded, calibration, ImatrixSpec(include_output=bool(form.include_output),
                                                                   batch_size=whole(form.batch_size)), progress)
    label = label_for(session, what)
    session = replace(session, imatrices={**session.imatrices, label: imatrix})
    note = precision_note(loaded.info.dtype)
    return {"status": summary_line(label, imatrix) + (f"\n- {note}" if note else ""), **views(session, label), "session": session}


def check_load(form: LoadForm, context: AppContext) -> None:
    if not form.imatrix_file:
        raise Invalid("imatrix_file", "Choose an imatrix file (.gguf or legacy .dat) to load.")
    on_field("imatrix_file", lambda: context.guard.upload(form.imatrix_file, "imatrix file"))


def load_file(form: LoadForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    check_load(form, context)
    imatrix = read_imatrix(form.imatrix_file, chunk_size=whole(form.chunk_size))
    if not len(imatrix):
        raise CalibscopeError(f"'{Path(form.imatrix_file).name}' holds no tensor.")
    label = label_for(session, f"file {Path(form.imatrix_file).name}")
    session = replace(session, imatrices={**session.imatrices, label: imatrix})
    return {"status": summary_line(label, imatrix), **views(session, label), "session": session}


def compare(form: CompareForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    if len(session.imatrices) < 2:
        raise CalibscopeError("Compare needs two matrices: collect another one, or load a file from llama-imatrix.")
    if form.first == form.second:
        raise CalibscopeError("Choose two different matrices.")
    first, second = session.require_imatrix(form.first), session.require_imatrix(form.second)
    table = compare_imatrices(first, second)
    if not len(table):
        raise CalibscopeError("These two matrices have no tensor in common: were they made for the same model?")
    comparable = table[table["comparable"]]
    worst = comparable.sort_values("p99_relative_difference").iloc[-1]
    status = (f"**{form.first}** vs **{form.second}**: {len(table):,} tensors in common; the median tensor's channels "
              f"differ by {comparable['p99_relative_difference'].median():.2%} at the 99th percentile, the most by "
              f"{worst['p99_relative_difference']:.2%} (**{worst['tensor']}**); channel ranking ρ ≥ "
              f"{comparable['spearman'].min():.3f}, top-1% channels shared {comparable['top1pct_overlap'].mean():.0%}.")
    if not table["counts_equal"].all():
        status += " Token counts differ: importances are compared as means (what llama-quantize uses)."
    missing = len(table.attrs["only_a"]) + len(table.attrs["only_b"])
    if missing:
        status += f" {missing} tensors are in only one of them."
    formatted = shown(table.drop(columns=["comparable"]), {
        "p50_relative_difference": ".3%", "p99_relative_difference": ".3%", "max_relative_difference": ".3%",
        "spearman": ".4f", "top1pct_overlap": ".0%", "mean_ratio": ".4f"},
        headers={"p50_relative_difference": "p50 diff", "p99_relative_difference": "p99 diff",
                 "max_relative_difference": "max diff", "top1pct_overlap": "top 1% shared", "mean_ratio": "mean a/b"})
    return {"status": status, "comparison": comparison_figure(table, form.first, form.second),
            "comparison_table": formatted}


@shown_to_user
def show_tensor(tensor: str, label: str, other: str, session: Session | None):
    session = session or Session()
    imatrix = session.require_imatrix(label)
    if not tensor or tensor not in imatrix.entries:
        raise gr.Error("Choose a tensor of this matrix.")
    compared = session.imatrices.get(other) if other and other != label else None
    return channel_importance(imatrix, tensor, compared=compared, labels=(label, other)), shown_top(imatrix, tensor)


def build_tab(session: gr.State, context: AppContext) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=280):
            source = gr.Radio([CURRENT_SET, TEXT_FILE], value=CURRENT_SET, label="Collect from")
            text_file = gr.File(label="Text file (as given to llama-imatrix -f)", file_types=[".txt"], type="filepath",
                                height=90, visible=False)
            with gr.Row(visible=False) as chunking:
                n_ctx = gr.Number(value=512, label="Chunk size (-c)", precision=0, minimum=16)
                chunks = gr.Number(value=32, label="Chunks (--chunks)", precision=0, minimum=1)
            include_output = gr.Checkbox(False, label="Include the output tensor (--process-output)")
            batch_size = gr.Number(value=8, label="Batch size", precision=0, minimum=1)
            run, cancel = run_and_cancel("Collect imatrix")
            with gr.Accordion("Load a matrix from llama-imatrix", open=False):
                imatrix_file = gr.File(label="imatrix file (.gguf or legacy .dat)", file_types=[".gguf", ".dat"],
                                       type="filepath", height=90, elem_id="imatrix-file")
                chunk_size = gr.Number(value=512, label="Chunk size of a legacy file", precision=0, minimum=1,
                                       info=HELP["chunk_size"])
                load = gr.Button("Load")
            files = gr.File(label="Downloads (llama-quantize --imatrix FILE)", file_count="multiple", interactive=False)
        with gr.Column(scale=3):
            status = status_block(session, "llama.cpp's importance matrix: Σx² per input channel of every weight and "
                                           "the tokens behind it, what llama-quantize weighs columns by (IQ2/IQ3, K-quants).")
            heatmap = result_plot()
            experts = result_plot()
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Row():
                first = gr.Dropdown(label="Matrix", choices=[], interactive=True)
                tensor = gr.Dropdown(label="Tensor", choices=[], interactive=True,
                                     info=HELP["tensor"])
            channels = result_plot()
        with gr.Column(scale=1, min_width=260):
            top = result_table("Top channels")
    with gr.Row(equal_height=False):
        second = gr.Dropdown(label="Compare with", choices=[], interactive=True)
        compare_button = gr.Button("Compare", variant="secondary")
    compare_status = gr.Markdown()
    comparison = result_plot()
    comparison_table = result_table("Per tensor (sortable)", max_height=360)

    source.change(lambda chosen: [gr.update(visible=chosen == TEXT_FILE)] * 2, source, [text_file, chunking])
    shown_views = {"heatmap": heatmap, "experts": experts, "tensor": tensor, "channels": channels, "top": top,
                   "first": first, "second": second, "downloads": files}
    connect(run.click, collect, CollectForm,
            {"source": source, "text_file": text_file, "n_ctx": n_ctx, "chunks": chunks, "include_output": include_output,
             "batch_size": batch_size}, session, {"status": status, **shown_views, "session": session}, context,
            api_name="collect_imatrix", status=status, cancel=cancel, check=check_collect)
    connect(load.click, load_file, LoadForm, {"imatrix_file": imatrix_file, "chunk_size": chunk_size}, session,
            {"status": status, **shown_views, "session": session}, context, api_name="load_imatrix", status=status, heavy=False,
            check=check_load)
    connect(compare_button.click, compare, CompareForm, {"first": first, "second": second}, session,
            {"status": compare_status, "comparison": comparison,
             "comparison_table": comparison_table}, context, api_name="compare_imatrices", status=compare_status, heavy=False)
    first.input(switch_matrix, [first, session], [shown_views[name] for name in MATRIX_VIEWS])
    build_section(session, context, first)
    for trigger in (tensor.input, second.input):
        trigger(show_tensor, [tensor, first, second, session], [channels, top])
