"""The dashboard: ``build_app()`` assembles the tabs; ``launch()`` serves them. No work at import."""
from __future__ import annotations

import logging
import shutil

import gradio as gr

from ui.context import AppContext
from ui.limits import Limits
from ui.state import Session
from ui.tabs import (
    activations,
    compare,
    coverage,
    dataset,
    export,
    hessians,
    imatrix,
    model_data,
    quantize,
    sensitivity,
)
from ui.theme import CSS, theme

# The flow of a session, left to right: each tab uses what the ones before it built.
TABS = [("Model & Data", "model-data", model_data), ("Dataset", "dataset", dataset),
        ("Activation ranges", "activations", activations), ("Coverage", "coverage", coverage), ("Hessians", "hessians", hessians),
        ("Sensitivity", "sensitivity", sensitivity), ("Quantize", "quantize", quantize), ("Compare", "compare", compare),
        ("Imatrix", "imatrix", imatrix), ("Export", "export", export)]
log = logging.getLogger(__name__)
TITLE = "calibscope"
SESSION_TTL_S = 3600
# Gradio keeps a copy of every file it serves: every (check, age) seconds it drops the copies older than age.
SERVED_COPIES = {False: (3600, 86400), True: (600, 3600)}  # local, shared Space
TAGLINE = "Choose, inspect and trust the calibration data of post-training quantization."


def build_app(limits: Limits | None = None, default_model: str | None = None,
              context: AppContext | None = None) -> gr.Blocks:
    """The whole dashboard as a ``gr.Blocks``, not launched.

    ``default_model`` preselects a model (the builtin Gemma when installed, otherwise a tiny one);
    ``context`` (limits, model cache, evaluation cache) is made here unless given.
    """
    context = context or AppContext(limits=limits or Limits.from_environment(), default_model=default_model)
    limits = context.limits
    with gr.Blocks(title=TITLE, delete_cache=SERVED_COPIES[limits.shared]) as app:
        # Shared Space: a visitor's results (Hessians can take hundreds of MB) are freed an hour
        # after their last change, so memory does not grow with every visitor who ever came.
        session = gr.State(Session(), time_to_live=SESSION_TTL_S if limits.shared else None,
                           delete_callback=Session.close)
        mode = " · shared Space: sizes are capped" if limits.shared else ""
        gr.Markdown(f"# {TITLE}\n{TAGLINE}{mode}", elem_id="cs-header")
        with gr.Tabs():
            for label, tab_id, tab in TABS:
                with gr.Tab(label, id=tab_id):
                    tab.build_tab(session, context)
    return app


def launch(
    host: str = "127.0.0.1", port: int = 7860, share: bool = False, shared_space: bool | None = None, **kwargs
) -> None:
    """Serve the dashboard (blocks until stopped). A shared Space first removes what an earlier run of
    the app left on disk: staging folders and partial files, and the downloads of visitors who are gone."""
    limits = Limits.from_environment(shared_space)
    context = AppContext(limits=limits)
    if context.guard.disk is not None:
        removed = context.guard.disk.sweep()
        if context.guard.work_dir is not None:
            shutil.rmtree(context.guard.work_dir / "downloads", ignore_errors=True)
        log.info("shared Space: %d stale staging files removed; disk %s MB of %s MB", len(removed),
                 f"{context.guard.disk.usage(fresh=True) / 2**20:,.0f}", f"{context.guard.disk.total / 2**20:,.0f}")
    app = build_app(context=context)
    app.queue(default_concurrency_limit=2)
    # show_error: what Gradio itself refuses (an upload path that was never uploaded, a file over the
    # size limit) reaches the visitor as its message; calibscope's own handlers answer in the status line
    app.launch(
        server_name=host, server_port=port, share=share, theme=theme(), css=CSS,
        max_file_size=limits.max_upload_bytes, show_error=True, **kwargs,
    )
