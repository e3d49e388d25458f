"""load_corpus: a CorpusSpec read into a ``datasets.Dataset`` (text, source, row_id; messages for
chat data), within the guard's memory budget."""
from __future__ import annotations

import os
from collections.abc import Callable

import datasets

from engine import guard
from engine.corpus.builtin import builtin_documents
from engine.corpus.documents import to_dataset
from engine.corpus.files import file_documents
from engine.corpus.hub import hub_documents
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
