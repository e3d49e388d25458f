"""Cancel buttons: stop a running pass at its next progress report, per browser session.

Gradio's ``cancels=`` frees the page at once, but a handler running in a worker thread cannot be
killed; it would keep the model's lock until it finished. So the Cancel button also flags the
visitor's session, and the handler's progress callback raises at its next report (every batch or
layer), unwinding through the engine's ``finally`` blocks: hooks removed, weights restored, lock
released, and the session keeps what it had before the run.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import gradio as gr

from engine.errors import CalibscopeError

_flagged: set[str] = set()
_lock = threading.Lock()


class Cancelled(CalibscopeError):
    """The visitor pressed Cancel."""


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def request_cancel(request: gr.Request) -> str:
    session = _session(request)
    if session:
        with _lock:
            _flagged.add(session)
    return "**Cancelled.** Nothing was changed; what you built before is kept."


def cancellable(progress: gr.Progress, request: gr.Request | None) -> Callable[[float, str], None]:
    """The engine's ``progress(fraction, message)`` for one run, raising ``Cancelled`` once the
    visitor has pressed Cancel (a flag left from an earlier run is cleared first)."""
    session = _session(request)
    with _lock:
        _flagged.discard(session)

    def report(fraction: float, message: str) -> None:
        with _lock:
            stop = session in _flagged
            _flagged.discard(session)
        if stop:
            raise Cancelled("Cancelled.")
        progress(fraction, desc=message)

    return report


def run_and_cancel(label: str) -> tuple[gr.Button, gr.Button]:
    """A step's primary button with its Cancel button beside it."""
    with gr.Row():
        run = gr.Button(label, variant="primary", scale=3)
        cancel = gr.Button("Cancel", variant="stop", size="sm", min_width=80)
    return run, cancel


def wire_cancel(button: gr.Button, event, status) -> None:
    """``button`` cancels the run that ``event`` starts and says so in ``status``."""
    button.click(request_cancel, None, status, cancels=[event], queue=False)
