"""What a read corpus is, for people: its size, lengths and domains, and what reading decided."""
from __future__ import annotations

import statistics
from collections import Counter

import datasets

from engine.corpus.documents import column, corpus_notes


def _domain(source: str) -> str:
    return source.split(":", 1)[0] if ":" in source else "file"


def corpus_summary(dataset: datasets.Dataset) -> list[tuple[str, str]]:
    """(property, value) rows describing a corpus: size, lengths, and its domains."""
    lengths = [len(text) for text in column(dataset, "text")]
    domains = Counter(_domain(source) for source in column(dataset, "source"))
    rows = [
        ("Documents", f"{len(lengths):,}"),
        ("Characters", f"{sum(lengths):,}"),
        ("Median document", f"{statistics.median(lengths):,.0f} characters"),
        ("Longest document", f"{max(lengths):,} characters"),
    ]
    rows += [(f"Domain: {name}", f"{count:,} documents") for name, count in domains.most_common()]
    if "messages" in dataset.column_names:
        rows.append(("Chat records", f"{sum(1 for m in column(dataset, 'messages') if m):,}"))
    return rows + notes_rows(corpus_notes(dataset))


def notes_rows(notes: dict) -> list[tuple[str, str]]:
    """What reading decided, for people: dropped documents and the text column used."""
    rows = []
    if notes.get("dropped_short"):
        rows.append(("Dropped as too short", (f"{notes['dropped_short']:,} of {notes['read']:,} read "
                                              f"(fewer than {notes['min_chars']} characters)")))
    if "text_column" in notes:
        how = "guessed: the only text-like column" if notes.get("column_guessed") else "chosen"
        rows.append(("Text column", f"'{notes['text_column']}' ({how}; columns: {', '.join(notes['columns'])})"))
    return rows
