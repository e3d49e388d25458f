"""Cancel buttons: stop a running pass at its next progress report, per run.

Gradio's ``cancels=`` frees the page at once (and drops a run still waiting in the queue), but a
handler running in a worker thread cannot be killed; it would keep the model's lock until it
finished. So each run registers itself under its visitor's session and its step while it runs; the
step's Cancel button marks the runs of that step in that session, and a marked run's progress
callback raises at its next report (every batch or layer), unwinding through the engine's
``finally`` blocks: hooks removed, weights restored, lock released, and the session keeps what it
had before the run. A mark belongs to the run it was meant for: another step's run in the same
session, or the next run of the same step, never sees it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import gradio as gr

from engine.errors import CalibscopeError

_running: dict[tuple[str, str], set[Run]] = {}  # (session, step) -> the runs going on now
_lock = threading.Lock()
CANCELLED = "**Cancelled.** Nothing was changed; what you built before is kept."


class Cancelled(CalibscopeError):
    """The visitor pressed Cancel."""


@dataclass(eq=False)
class Run:
    """One run of a step: marked when its Cancel button is pressed while it runs."""

    stop: threading.Event = field(default_factory=threading.Event)


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def request_cancel(request: gr.Request | None, step: str) -> str:
    """Mark every run of ``step`` going on in the visitor's session."""
    with _lock:
        for run in _running.get((_session(request), step), ()):
            run.stop.set()
    return CANCELLED


@contextmanager
def cancellable(progress: gr.Progress, request: gr.Request | None, step: str) -> Iterator[Callable[[float, str], None]]:
    """The engine's ``progress(fraction, message)`` for one run of ``step``, raising ``Cancelled``
    once that run's Cancel button was pressed; the run is registered while the block runs."""
    key, run = (_session(request), step), Run()
    with _lock:
        _running.setdefault(key, set()).add(run)

    def report(fraction: float, message: str) -> None:
        if run.stop.is_set():
            raise Cancelled("Cancelled.")
        progress(fraction, desc=message)

    try:
        yield report
    finally:
        with _lock:
            runs = _running.get(key, set())
            runs.discard(run)
            if not runs:
                _running.pop(key, None)


def run_and_cancel(label: str) -> tuple[gr.Button, gr.Button]:
    """A step's primary button with its Cancel button beside it."""
    with gr.Row():
        run = gr.Button(label, variant="primary", scale=3)
        cancel = gr.Button("Cancel", variant="stop", size="sm", min_width=80)
    return run, cancel


def wire_cancel(button: gr.Button, event, status, step: str) -> None:
    """``button`` cancels the run of ``step`` that ``event`` starts and says so in ``status``."""

    def cancel(request: gr.Request) -> str:
        return request_cancel(request, step)

    button.click(cancel, None, status, cancels=[event], queue=False)
