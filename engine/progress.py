"""Progress reporting: the engine calls ``progress(fraction, message)`` and never prints.

The UI adapts ``gr.Progress`` to this callable, the CLI adapts ``tqdm``; the default does nothing.
"""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, fraction: float, message: str) -> None: ...


def no_progress(fraction: float, message: str) -> None:
    """The default Progress: ignore every report."""


def scaled(progress: Progress, start: float, stop: float) -> Progress:
    """A Progress that maps its own [0, 1] onto [start, stop] of ``progress`` (for sub-steps)."""

    def report(fraction: float, message: str) -> None:
        clamped = min(max(fraction, 0.0), 1.0)
        progress(start + (stop - start) * clamped, message)

    return report


def labelled(progress: Progress, stage: str) -> Progress:
    """A Progress whose messages name their stage ("Hessians: Block 3 of 18 done")."""
    return lambda fraction, message: progress(fraction, f"{stage}: {message}")
