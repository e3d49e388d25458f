"""One exception family whose messages are shown to the user as they are.

Every message says what was wrong and what to do about it.
"""
from __future__ import annotations


class CalibscopeError(Exception):
    """Base class: a problem the user can act on (bad input, missing model, offline hub)."""


class SpecError(CalibscopeError, ValueError):
    """A spec (ModelSpec, CorpusSpec, ...) holds a value that is not allowed."""


class ModelLoadError(CalibscopeError):
    """A model could not be loaded (unknown name, offline hub, missing optional package)."""


class CorpusError(CalibscopeError):
    """A corpus could not be read or holds no usable documents."""


class SamplingError(CalibscopeError):
    """A calibration set could not be built from the corpus as asked."""


class ExportError(CalibscopeError):
    """An artifact could not be written (the target exists, a format is unknown, the disk is full)."""
