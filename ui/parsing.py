"""Text fields people type lists into: parsed, or a message that shows the expected form."""
from __future__ import annotations

from engine.errors import SpecError


def _numbers(text: str | None, kind: type, what: str, example: str) -> tuple:
    try:
        return tuple(kind(part) for part in (text or "").replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise SpecError(f"{what} {text!r} must be numbers separated by commas, e.g. {example}.") from None


def parse_edges(text: str | None) -> tuple[int, ...]:
    """'64, 128, 256' -> (64, 128, 256)."""
    return _numbers(text, int, "Bucket edges", "64, 128, 256")


def parse_counts(text: str | None) -> tuple[int, ...]:
    """'1, 4, 16' -> (1, 4, 16)."""
    return _numbers(text, int, "Sample counts", "1, 4, 16, 64")


def parse_percentiles(text: str | None) -> tuple[float, ...]:
    """'99.9, 99.99' -> (99.9, 99.99)."""
    return _numbers(text, float, "Percentiles", "99.9, 99.99, 99.999")


def whole(value: float | None) -> int:
    """A gr.Number's value as a whole number (empty -> 0, which the specs then refuse with a message)."""
    return int(value or 0)
