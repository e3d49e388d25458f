"""What the dashboard tests share: one app context, a progress recorder, and the first steps.

Handlers are called as the wiring calls them: under their app's guard (its policy and budgets)."""
from __future__ import annotations

from engine.guard import guarded
from ui.context import AppContext
from ui.state import Session
from ui.tabs.dataset import DatasetForm, build_calibration_set
from ui.tabs.model_data import ModelDataForm, load_model_and_corpus

CONTEXT = AppContext()  # the tests' app: one model cache and evaluation cache, as one running dashboard has


class Recorder:
    """The engine's Progress, remembering every report."""

    def __init__(self):
        self.calls = []

    def __call__(self, fraction, message):
        self.calls.append((fraction, message))


def handled(handler, form, session, context=CONTEXT, progress=None) -> dict:
    """``handler``'s answer to ``form``, run under the context's guard as the dashboard runs it."""
    with guarded(context.guard):
        return handler(form, session, context, progress or Recorder())


def load(session=None, context=CONTEXT, **fields) -> dict:
    """Model & Data on the tiny Llama and a builtin corpus (python-docs unless given)."""
    fields = {"model": "tiny-random-llama", "builtin_name": "python-docs", **fields}
    return handled(load_model_and_corpus, ModelDataForm(**fields), session or Session(), context)


def build(session, context=CONTEXT, **fields) -> dict:
    """Dataset: a small length-stratified set unless told otherwise."""
    fields = {"nsamples": 24, "length": 256, "edges": "16, 64, 256", **fields}
    return handled(build_calibration_set, DatasetForm(**fields), session, context)
