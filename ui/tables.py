"""Tables as people read them: numbers formatted for their range, flags as marks, short headers.

The values stay exact in the session (and in every export); only the shown copy is text.
"""
from __future__ import annotations

import math

import pandas as pd


def number(value, spec: str = ".4g") -> str:
    """A number in ``spec`` (general format by default: 0.0123, 1.2e+06); blank for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return format(value, spec)


def percent(value) -> str:
    """A share as a percentage with significant digits: 0.00012 -> 0.012%."""
    return "" if value is None or math.isnan(value) else f"{100 * value:.3g}%"


def shown(table: pd.DataFrame, formats: dict[str, object] | None = None, flags: tuple[str, ...] = (),
          headers: dict[str, str] | None = None) -> pd.DataFrame:
    """A display copy of ``table``: ``formats`` maps a column to a format spec (".3g") or a function,
    ``flags`` are boolean columns shown as ✓ or nothing, ``headers`` renames columns."""
    out = table.copy()
    for column, how in (formats or {}).items():
        if column in out:
            out[column] = [how(v) if callable(how) else number(v, how) for v in out[column]]
    for column in flags:
        if column in out:
            out[column] = ["✓" if bool(v) else "" for v in out[column]]
    return out.rename(columns=headers or {})
