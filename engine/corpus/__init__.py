"""load_corpus: builtin offline corpora, Hugging Face datasets and local files -> Dataset.

Every corpus becomes a ``datasets.Dataset`` with columns text, source (where each document came
from) and row_id (its position), plus ``messages`` for chat data.
"""
from __future__ import annotations

import os
import statistics
from collections import Counter
from collections.abc import Callable

import datasets

from engine import guard
from engine.corpus.builtin import builtin_documents
from engine.corpus.documents import column, corpus_notes, to_dataset
from engine.corpus.files import SUPPORTED as SUPPORTED_FILE_TYPES
from engine.corpus.files import check_file, file_documents
from engine.corpus.hub import HUB_RECIPES, hub_documents
from engine.progress import Progress, no_progress
from engine.specs import CorpusKind, CorpusSpec


def _builtin(spec: CorpusSpec):
    return builtin_documents(spec.name, spec.split), None, {}


def _hub(spec: CorpusSpec):
    return hub_documents(spec), None, {}


_SOURCES: dict[CorpusKind, Callable[[CorpusSpec], tuple]] = {
    CorpusKind.BUILTIN: _builtin,
    CorpusKind.HUB: _hub,
    CorpusKind.FILE: file_documents,
}


# Reading a file holds, for a moment, several times what it decodes to: Python strings and records,
# then the Arrow table they become.
READ_OVERHEAD = 3


def _reading_bytes(spec: CorpusSpec) -> int:
    """What reading ``spec`` may hold at once: what its file may decode to (a compressed file can
    decode to far more than its size, up to the read limit), times the overhead."""
    if spec.kind is not CorpusKind.FILE or not os.path.isfile(spec.name):
        return 0
    decoded = min(guard.current().reading.decoded_bytes, EXPANSION * os.path.getsize(spec.name))
    return READ_OVERHEAD * decoded


EXPANSION = 64  # the most a file is assumed to expand when decoded (the read limit caps it anyway)


def load_corpus(spec: CorpusSpec, progress: Progress = no_progress) -> datasets.Dataset:
    """Read the corpus ``spec`` names; raises CorpusError with a fix when it cannot."""
    progress(0.0, f"Reading {spec.label}")
    with guard.current().reserve_memory(f"Reading {spec.label}", _reading_bytes(spec)):
        documents, extra, notes = _SOURCES[spec.kind](spec)
        dataset = to_dataset(documents, spec.min_chars, spec.max_documents, spec.label, extra, notes)
    progress(1.0, f"Read {len(dataset):,} documents from {spec.label}")
    return dataset


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


__all__ = ["HUB_RECIPES", "SUPPORTED_FILE_TYPES", "check_file", "corpus_notes", "corpus_summary", "load_corpus", "notes_rows"]
