"""Imatrix tab, GGUF: the chosen importance matrix handed to llama.cpp's own llama-quantize and the
result measured by llama-perplexity, against the float model and the same type made without the
matrix. Offered when llama.cpp's tools are here; where they are not, the section says how to get them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine.errors import CalibscopeError
from engine.experiments import HELD_OUT, held_out_texts
from engine.imatrix import GGUF_TYPES, LLAMA_CONTEXT, LLAMA_CPP_HOW_TO_GET, imatrix_gguf, tools_folder, write_held_out
from engine.progress import Progress, no_progress
from ui.context import AppContext
from ui.parsing import whole
from ui.state import Session
from ui.wiring import connect

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "kind": "IQ types need a matrix; K-quants weigh columns by it",
}


@dataclass(frozen=True)
class GgufForm:
    matrix: str = ""
    kind: str = GGUF_TYPES[0]
    held_out: str = next(iter(HELD_OUT))
    chunks: float = 8


GGUF_BYTES_PER_PARAMETER = 0.6  # the largest offered type, Q4_K_M, takes about 4.8 bits per weight


def make_gguf(form: GgufForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    if tools_folder() is None:
        raise CalibscopeError(LLAMA_CPP_HOW_TO_GET)
    if not form.matrix:
        raise CalibscopeError("Collect or load an importance matrix first (above), then choose it.")
    imatrix = session.require_imatrix(form.matrix)
    loaded = context.model(session)
    chunks = whole(form.chunks)
    lines: list[str] = []

    def write(folder: Path) -> Path:
        text = write_held_out(loaded.tokenizer, held_out_texts(form.held_out), chunks, folder / "held-out.txt")
        result = imatrix_gguf(loaded, imatrix, form.kind, text, folder, chunks, progress)
        text.unlink()
        lines.append(f"**{result.describe()}** Perplexity: {chunks} chunks of {LLAMA_CONTEXT} tokens of {form.held_out}.")
        return result.path

    size = int(loaded.info.parameters * GGUF_BYTES_PER_PARAMETER)
    context.limits.check_downloads(session.exports.megabytes(), size / 2**20, "The GGUF")
    path, fresh = session.exports.file(f"gguf-{form.kind}", (form.matrix, form.kind, form.held_out, chunks), write, size)
    if not fresh:
        lines = [f"**Unchanged since the last click**: the {form.kind} GGUF of {form.matrix} is ready below."]
    return {"status": "\n".join(lines), "files": [str(path)]}


def build_section(session: gr.State, context: AppContext, matrices: gr.Dropdown) -> None:
    gr.Markdown("### A GGUF from this matrix\nllama.cpp's own `llama-quantize --imatrix` quantizes the model with the "
                "matrix chosen above, and `llama-perplexity` measures it against the float model and the same type "
                "made without the matrix.")
    if tools_folder() is None:
        gr.Markdown(f"**Not available here.** {LLAMA_CPP_HOW_TO_GET}", elem_classes="cs-status")
        return
    with gr.Row():
        kind = gr.Dropdown(list(GGUF_TYPES), value=GGUF_TYPES[0], label="GGUF type", scale=1,
                           info=HELP["kind"])
        held_out = gr.Dropdown(list(HELD_OUT), value=next(iter(HELD_OUT)), label="Held-out text", scale=2)
        chunks = gr.Number(8, label=f"Perplexity chunks ({LLAMA_CONTEXT} tokens)", precision=0, minimum=1, scale=1)
    make = gr.Button("Make GGUF and measure it")
    status = gr.Markdown("", elem_classes="cs-status")
    files = gr.File(label="GGUF", file_count="multiple", interactive=False)
    connect(make.click, make_gguf, GgufForm, {"matrix": matrices, "kind": kind, "held_out": held_out, "chunks": chunks},
            session, {"status": status, "files": files}, context, api_name="imatrix_gguf", status=status)
