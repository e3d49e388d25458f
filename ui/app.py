"""The dashboard: ``build_app()`` assembles the tabs; ``launch()`` serves them. No work at import."""
from __future__ import annotations

import gradio as gr

from ui.limits import Limits
from ui.state import Session
from ui.tabs import (
    activations,
    compare,
    dataset,
    export,
    hessians,
    model_data,
    quantize,
    sensitivity,
)
from ui.theme import CSS, theme

TITLE = "calibscope"
SESSION_TTL_S = 3600
TAGLINE = "Choose, inspect and trust the calibration data of post-training quantization."


def build_app(limits: Limits | None = None, default_model: str | None = None) -> gr.Blocks:
    """The whole dashboard as a ``gr.Blocks``, not launched.

    ``default_model`` preselects a model (the builtin Gemma when installed, otherwise a tiny one).
    """
    limits = limits or Limits.from_environment()
    with gr.Blocks(title=TITLE) as app:
        # Shared Space: a visitor's results (Hessians can take hundreds of MB) are freed an hour
        # after their last change, so memory does not grow with every visitor who ever came.
        session = gr.State(Session(), time_to_live=SESSION_TTL_S if limits.shared else None)
        mode = " · shared Space: sizes are capped" if limits.shared else ""
        gr.Markdown(f"# {TITLE}\n{TAGLINE}{mode}", elem_id="cs-header")
        with gr.Tabs():
            with gr.Tab("Model & Data", id="model-data"):
                model_data.build_tab(session, limits, default_model)
            with gr.Tab("Dataset", id="dataset"):
                dataset.build_tab(session, limits)
            with gr.Tab("Activation ranges", id="activations"):
                activations.build_tab(session)
            with gr.Tab("Hessians", id="hessians"):
                hessians.build_tab(session, limits)
            with gr.Tab("Sensitivity", id="sensitivity"):
                sensitivity.build_tab(session, limits)
            with gr.Tab("Quantize", id="quantize"):
                quantize.build_tab(session, limits)
            with gr.Tab("Compare", id="compare"):
                compare.build_tab(session, limits)
            with gr.Tab("Export", id="export"):
                export.build_tab(session)
    return app


def launch(
    host: str = "127.0.0.1", port: int = 7860, share: bool = False, shared_space: bool | None = None, **kwargs
) -> None:
    """Serve the dashboard (blocks until stopped)."""
    limits = Limits.from_environment(shared_space)
    app = build_app(limits)
    app.queue(default_concurrency_limit=2)
    app.launch(
        server_name=host, server_port=port, share=share, theme=theme(), css=CSS,
        max_file_size=limits.max_upload_bytes, **kwargs,
    )
