"""Offline corpora present wherever Python is: its reference docs prose and its standard library.

python-docs: the prose of ``pydoc_data.topics`` (~465 kB), one document per section, so lengths
range from a paragraph to several pages. python-code: the standard library's modules (test
suites and site-packages excluded), one document per file. mixed: both. Each document goes to the
train (90%) or test (10%) split by a stable hash of its source, so held-out text never overlaps.
"""
from __future__ import annotations

import hashlib
import itertools
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from engine.specs import BuiltinCorpus, Split

TEST_FRACTION_PERCENT = 10
# pydoc_data is the docs corpus again, as a 750 kB Python literal.
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "pydoc_data"}
# A section heading in pydoc topics: a title line underlined with one repeated character.
_HEADING = re.compile(r"^(?P<title>\S[^\n]*)\n(?P<rule>[*=\-~^]{3,})[ \t]*$", re.MULTILINE)


def split_of(source: str) -> str:
    """train or test for a document, stable across runs, machines and Python versions."""
    bucket = int(hashlib.sha256(source.encode()).hexdigest(), 16) % 100
    return Split.TEST.value if bucket < TEST_FRACTION_PERCENT else Split.TRAIN.value


def _sections(topic: str, text: str) -> Iterator[tuple[str, str]]:
    starts = [m.start() for m in _HEADING.finditer(text) if len(m["rule"]) >= len(m["title"].rstrip()) - 1]
    bounds = [0, *[s for s in starts if s > 0], len(text)]
    for index, (begin, end) in enumerate(itertools.pairwise(bounds)):
        yield text[begin:end], f"python-docs:{topic}#{index}"


def python_docs() -> Iterator[tuple[str, str]]:
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        yield from _sections(topic, topics[topic])


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = (p for p in root.rglob("*.py") if not _EXCLUDED_DIRS.intersection(p.relative_to(root).parts))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def python_code() -> Iterator[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):  # a few test fixtures are deliberately not UTF-8
            continue
        yield text, f"python-code:{path.relative_to(root).as_posix()}"


BUILTIN_CORPORA = {
    BuiltinCorpus.PYTHON_DOCS.value: lambda: python_docs(),
    BuiltinCorpus.PYTHON_CODE.value: lambda: python_code(),
    BuiltinCorpus.MIXED.value: lambda: (doc for make in (python_docs, python_code) for doc in make()),
}


def builtin_documents(name: str, split: str) -> Iterator[tuple[str, str]]:
    """(text, source) pairs of a builtin corpus, restricted to one split (or all)."""
    for text, source in BUILTIN_CORPORA[name]():
        if split == Split.ALL.value or split_of(source) == split:
            yield text, source
