"""One way to connect a button to a handler: named widgets in, a typed form to the handler, named
results out.

A tab declares its widgets as ``{field name: component}`` and its outputs as ``{name: component}``;
its handler is a plain function ``handler(form, session, context, progress) -> {name: value}`` that
tests call directly. ``connect`` builds the function Gradio calls: it turns the widget values into
the form, runs the handler with the visitor's session, the app's context and a cancellable progress
callback, shows any failure as a readable message, and returns the results by component. Gradio
reads the parameter names it shows in the API page (``/api``) and where to pass ``gr.Progress`` and
``gr.Request`` from the function's signature, which is therefore written out from the form's names.
"""
from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from engine.errors import CalibscopeError
from engine.guard import give_back_freed, guarded
from engine.progress import Progress
from ui.cancel import cancellable, wire_cancel
from ui.context import AppContext
from ui.errors import user_message
from ui.state import Session
from ui.widgets import shown

log = logging.getLogger(__name__)

Handler = Callable[[Any, Session, AppContext, Progress], dict[str, Any]]
Check = Callable[[Any, AppContext], None]  # (form, context): raises when the request is refused before it runs


class Invalid(CalibscopeError):
    """A refusal that belongs to one field of a form: the page shows it on that field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def on_field(field: str, check: Callable[[], Any]) -> Any:
    """``check()``'s result; a refusal it raises (its own kind kept) is attributed to ``field``."""
    try:
        return check()
    except CalibscopeError as error:
        if getattr(error, "field", None) is None:
            error.field = field
        raise


def gradio_validator(check: Check, form: type, names: list[str], context: AppContext) -> Callable:
    """The validator Gradio runs before it queues a request (``validator=``, never waiting behind
    other visitors' work): the form's cheap checks (names, paths, upload sizes, counts) under the
    app's guard; a refusal is shown on its field, and the request never reaches the queue."""
    count = len(names)

    def validate(*args):
        if isinstance(args[count], Session):  # a request came: the session is in use from now, queued or running
            args[count].active_at = time.monotonic()
        verdicts = [gr.validate(True, "") for _ in range(count + 1)]
        try:
            with guarded(context.guard):
                check(form(**dict(zip(names, args[:count]))), context)
        except Exception as error:  # noqa: BLE001 - any refusal is the visitor's message, never a traceback
            field = getattr(error, "field", names[0])
            verdicts[names.index(field) if field in names else 0] = gr.validate(False, user_message(error))
        return verdicts

    validate.__name__ = validate.__qualname__ = f"check_{form.__name__}"
    return validate


def failure(error: Exception) -> str:
    """The status line of a step that did not happen: what was wrong, in the line people read."""
    return f"**Not done:** {user_message(error)}"


def gradio_function(handler: Handler, form: type, names: list[str], outputs: Mapping[str, gr.components.Component],
                    context: AppContext, track_tqdm: bool = False, step: str = "") -> Callable:
    """The function Gradio calls with the widget values, the session, gr.Progress and gr.Request.

    A failure becomes the step's status line (no error badge over it, no traceback, other views and
    the session left as they were); results go to their components, hidden ones made visible."""
    count = len(names)

    def run(*args):
        values, session, progress, request = args[:count], args[count], args[count + 1], args[count + 2]
        session = session or Session()
        memory = context.guard.memory
        if memory is not None:
            memory.settle()
        session.busy += 1  # while this step runs, the Space never takes this session's results back
        session.active_at = time.monotonic()
        try:
            # the app's policy and budgets for every loader and pass below; a Cancel stops this run only
            with guarded(context.guard), cancellable(progress, request, step or handler.__name__) as report:
                result = handler(form(**dict(zip(names, values))), session, context, report)
        except Exception as error:  # the boundary between the engine and the page
            if not isinstance(error, CalibscopeError):
                log.exception("handler %s failed", handler.__name__)
            return {outputs["status"]: failure(error)}
        finally:
            session.busy -= 1
            session.active_at = time.monotonic()
            if memory is not None:  # the step's temporaries are freed: hand their pages back now
                give_back_freed()
        kept = result.get("session")
        if isinstance(kept, Session):  # what the session now keeps counts in the memory budget
            for what, value in kept.results():
                context.guard.hold(value, what, release=kept.releaser(value))
        return {outputs[name]: shown(outputs[name], value) for name, value in result.items()}

    parameter = inspect.Parameter
    run.__signature__ = inspect.Signature(
        [parameter(name, parameter.POSITIONAL_OR_KEYWORD) for name in [*names, "session"]]
        + [parameter("progress", parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress(track_tqdm=track_tqdm)),
           parameter("request", parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request)])
    run.__annotations__ = {"request": gr.Request}
    run.__name__ = run.__qualname__ = handler.__name__
    return run


def connect(trigger: Callable, handler: Handler, form: type, widgets: Mapping[str, gr.components.Component],
            session: gr.State, outputs: Mapping[str, gr.components.Component], context: AppContext, *,
            api_name: str, status: gr.components.Component | None = None, cancel: gr.Button | None = None,
            heavy: bool = True, track_tqdm: bool = False, check: Check | None = None):
    """``trigger`` (e.g. ``button.click``) runs ``handler`` on the form made from ``widgets``;
    ``cancel`` stops it (and says so in ``status``); ``check`` refuses a request before it is queued
    (the handler runs it again: called directly, it refuses the same). Returns the event."""
    names = list(widgets)
    function = gradio_function(handler, form, names, outputs, context, track_tqdm, step=api_name)
    validator = gradio_validator(check, form, names, context) if check is not None else None
    event = trigger(function, [*widgets.values(), session], list(outputs.values()), api_name=api_name,
                    show_progress_on=[status] if status is not None else None,
                    concurrency_id="heavy" if heavy else None, validator=validator)
    if cancel is not None:
        wire_cancel(cancel, event, status, api_name)
    return event
