"""Widgets every tab uses the same way: results hidden until there is something to show, and a line
saying what the tab will work on."""
from __future__ import annotations

import gradio as gr

from ui.state import Session

HIDDEN_UNTIL_FILLED = (gr.Dataframe, gr.Plot)


def result_table(label: str, **kwargs) -> gr.Dataframe:
    """A read-only table that appears with its first result (no empty grid headed "1 2 3")."""
    return gr.Dataframe(label=label, interactive=False, visible=False, **kwargs)


def result_plot(**kwargs) -> gr.Plot:
    """A figure that appears with its first result (no empty frame)."""
    return gr.Plot(show_label=False, visible=False, **kwargs)


def shown(component: gr.components.Component, value):
    """What a handler returned, made visible where the component starts hidden."""
    if isinstance(component, HIDDEN_UNTIL_FILLED) and not isinstance(value, dict):
        return gr.update(value=value, visible=value is not None)
    return value


def working_on(session: Session | None) -> str:
    """The model, corpus and calibration set a step would use, or what to do first."""
    session = session or Session()
    if session.model_spec is None or session.corpus is None:
        return "Nothing loaded yet: start in **Model & Data**."
    loaded = f"**{session.model_spec.name}** on **{session.corpus_spec.label}** ({len(session.corpus):,} documents)"
    calibration = session.calibration
    if calibration is None:
        return f"{loaded} · no calibration set yet: build one in **Dataset**."
    tokens = int(calibration.lengths.sum())
    return (f"{loaded} · calibration set: **{len(calibration):,} samples**, {tokens:,} tokens "
            f"({calibration.manifest.strategy}, seed {calibration.spec.seed})")


def context_line(session: gr.State) -> gr.Markdown:
    """A line that always says what the tab works on, refreshed whenever the session changes."""
    line = gr.Markdown(working_on(None), elem_classes="cs-context")
    session.change(working_on, session, line, queue=False, show_progress="hidden")
    return line


def status_block(session: gr.State, intro: str) -> gr.Markdown:
    """The head of a tab's results: what it works on, then its status line (``intro`` until a run)."""
    context_line(session)
    return gr.Markdown(intro, elem_classes="cs-status")
