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
    seen = short = 0
    for index, (text, source) in enumerate(documents):
        seen += 1
        text = clean(text)
        if len(text.strip()) < min_chars:
            short += 1
            continue
        texts.append(text)
        sources.append(source)
        for key, values in (extra or {}).items():
            kept_extra[key].append(values[index])
        if max_documents is not None and len(texts) >= max_documents:
            break
    if not texts:
        raise CorpusError(
            f"{origin} holds no usable documents: {seen} read, none with at least {min_chars} "
            "characters after removing blank space. Check that it contains text, or lower the minimum characters."
        )
    columns = {"text": texts, "source": sources, "row_id": list(range(len(texts))), **kept_extra}
    notes = {**(notes or {}), "read": seen, "dropped_short": short, "min_chars": min_chars}
    return datasets.Dataset.from_dict(columns, info=datasets.DatasetInfo(description=json.dumps(notes)))
