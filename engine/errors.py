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


class HubUnavailable(ModelLoadError):
    """A model id the Hugging Face hub could not provide (unknown id, or no network and not cached)."""

    def __init__(self, name: str, reason: str, builtins: tuple[str, ...], local_folders: bool = True) -> None:
        self.name, self.reason, self.builtins = name, reason, builtins
        where = "a builtin model" + (" or a local model directory" if local_folders else "")
        super().__init__(f"Could not load '{name}' from the Hugging Face hub ({reason}). Check the id (org/name), or use "
                         f"{where}; builtin models work offline: {', '.join(builtins)}.")

    def without_local_folders(self) -> HubUnavailable:
        """The same advice where local folders are refused (a shared Space)."""
        return HubUnavailable(self.name, self.reason, self.builtins, local_folders=False)


class CorpusError(CalibscopeError):
    """A corpus could not be read or holds no usable documents."""


class SamplingError(CalibscopeError):
    """A calibration set could not be built from the corpus as asked."""


class ExportError(CalibscopeError):
    """An artifact could not be written (the target exists, a format is unknown, the disk is full)."""


class Refused(CalibscopeError):
    """An input this deployment does not take: on a shared Space, a path, a URL or a server file."""


class OverBudget(CalibscopeError):
    """Work refused before it starts: it would not fit the memory, disk or size budget."""
