"""Turning raw (text, source) pairs into the corpus Dataset every later stage reads."""
from __future__ import annotations

import json
import re
from collections.abc import Iterable

import datasets

from engine.errors import CorpusError

COLUMNS = ("text", "source", "row_id")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")


def column(dataset: datasets.Dataset, name: str) -> list:
    """All values of one column as a Python list, read through Arrow (iterating a Dataset column
    decodes row by row: ~100x slower on 100k rows). Respects select/shuffle index mappings."""
    return dataset.with_format("arrow")[name].to_pylist()


def clean(text: str) -> str:
    """Normalize newlines, drop leading blank lines and trailing whitespace; keep indentation."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


def corpus_notes(dataset: datasets.Dataset) -> dict:
    """What reading the corpus decided: documents read and dropped as too short, the text column
    used and whether it was guessed (kept with the Dataset, in its info)."""
    try:
        return json.loads(dataset.info.description or "{}")
    except json.JSONDecodeError:
        return {}


def read_from(notes: dict) -> str:
    """Where a file's text was read from, in words ("" when it is the file's plain text)."""
    if "text_column" in notes:
        how = " (the only text-like column)" if notes.get("column_guessed") else ""
        return f" from column '{notes['text_column']}'{how} of {', '.join(notes['columns'])}"
    fields = notes.get("text_fields")
    if fields:
        return f" from field{'s' if len(fields) > 1 else ''} {', '.join(repr(f) for f in fields)}"
    return ""


def _nothing_usable(origin: str, seen: int, longest: int, min_chars: int, notes: dict) -> str:
    """What was read, from where, what dropped it and what to do: never just 'nothing usable'."""
    if seen == 0:
        return f"{origin} holds no documents. Check that it contains text."
    other = " or choose another column" if "text_column" in notes else ""
    what = ("every one was empty" if longest == 0 else
            f"all were shorter than the minimum of {min_chars} characters after removing blank space "
            f"(the longest had {longest})")
    lower = f" Lower the minimum characters to {longest}{other}." if longest else f" Check that it contains text{other}."
    return f"{origin} holds no usable documents: {seen:,} read{read_from(notes)}, and {what}.{lower}"


def to_dataset(
    documents: Iterable[tuple[str, str]],
    min_chars: int,
    max_documents: int | None,
    origin: str,
    extra: dict[str, list] | None = None,
    notes: dict | None = None,
) -> datasets.Dataset:
    """Build the Dataset (text, source, row_id) from (text, source) pairs.

    Documents shorter than ``min_chars`` after cleaning are dropped (and counted); ``row_id`` is
    the position in the returned Dataset, ``source`` names where each document came from. ``extra``
    holds optional columns aligned with ``documents`` (e.g. chat ``messages``), filtered the same
    way; ``notes`` (how the reader chose the text) are kept with the Dataset (``corpus_notes``).
    """
    texts: list[str] = []
    sources: list[str] = []
    kept_extra: dict[str, list] = {key: [] for key in (extra or {})}
    seen = short = longest_short = 0
    for index, (text, source) in enumerate(documents):
        seen += 1
        text = clean(text)
        if len(text.strip()) < min_chars:
            short += 1
            longest_short = max(longest_short, len(text.strip()))
            continue
        texts.append(text)
        sources.append(source)
        for key, values in (extra or {}).items():
            kept_extra[key].append(values[index])
        if max_documents is not None and len(texts) >= max_documents:
            break
    if not texts:
        raise CorpusError(_nothing_usable(origin, seen, longest_short, min_chars, notes or {}))
    columns = {"text": texts, "source": sources, "row_id": list(range(len(texts))), **kept_extra}
    notes = {**(notes or {}), "read": seen, "dropped_short": short, "min_chars": min_chars}
    return datasets.Dataset.from_dict(columns, info=datasets.DatasetInfo(description=json.dumps(notes)))
