"""Turning failures into messages for people: never a traceback in the page, and the app stays up."""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import gradio as gr

from engine.errors import CalibscopeError

log = logging.getLogger(__name__)


def user_message(error: Exception) -> str:
    """The text a user sees for ``error``: our own messages as they are, others summarized."""
    if isinstance(error, CalibscopeError):
        return str(error)
    if isinstance(error, MemoryError):
        return "Out of memory: use fewer samples, shorter sequences or a smaller model."
    first_line = str(error).splitlines()[0] if str(error) else ""
    return (f"Unexpected error ({type(error).__name__}: {first_line[:300]}). "
            "The app is still running; the details are in the server log.")


def shown_to_user(handler: Callable) -> Callable:
    """Wrap a Gradio handler so every exception becomes a ``gr.Error`` with a readable message."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:  # the boundary between the engine and the page
            if not isinstance(error, CalibscopeError):
                log.exception("handler %s failed", handler.__name__)
            raise gr.Error(user_message(error), print_exception=False) from error

    return wrapper


def as_progress(progress: gr.Progress) -> Callable[[float, str], None]:
    """Adapt ``gr.Progress`` to the engine's ``progress(fraction, message)`` callable."""
    return lambda fraction, message: progress(fraction, desc=message)
