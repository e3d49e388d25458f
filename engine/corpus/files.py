"""Local corpus files: .txt (or a folder of them), .jsonl/.json (text or chat messages), .csv, .parquet.

Every way a file can be unusable (missing, too large, empty, binary, not UTF-8, invalid JSON, no
such column, more than it may decode to) raises CorpusError (or OverBudget) naming the file, the
problem and the fix. The path passes the guard's policy first (on a shared Space: an upload of
this visitor, never another file of the server), and what the file decodes to is counted against
the guard's read limits while it is read (``engine.corpus.tables``).
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

from engine import guard
from engine.corpus.tables import json_records, parquet_footer, read_csv, read_parquet
from engine.errors import CorpusError
from engine.guard import DecodedCount
from engine.specs import CorpusSpec, TxtMode

TEXT_SUFFIXES = (".txt", ".text", ".md", ".raw")
TABLE_SUFFIXES = (".csv", ".parquet")
JSON_SUFFIXES = (".jsonl", ".json")
SUPPORTED = TEXT_SUFFIXES + JSON_SUFFIXES + TABLE_SUFFIXES
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_LINE_BREAK = re.compile(r"\n")


def read_text_file(path: Path, max_bytes: int) -> str:
    """The file's text: the path through the guard's policy (on a shared Space, a visitor's own
    upload), its size checked against the smaller of ``max_bytes`` and the guard's limit, binary
    and non-UTF-8 content refused with a precise message."""
    path = guard.current().policy.upload(path, "text file")
    if not path.is_file():
        raise CorpusError(f"The text file '{path}' does not exist. Check the path or upload the file.")
    guard.current().reading.check_file(path, "file that contains text", max_bytes, error=CorpusError)
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise CorpusError(f"'{path.name}' looks like a binary file (it contains NUL bytes), not text.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CorpusError(
            f"'{path.name}' is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}). "
            "Save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`."
        ) from None


def _pieces(text: str, separator: re.Pattern) -> Iterator[str]:
    """The parts of ``text`` between matches of ``separator``, one at a time (a file of a million
    empty lines is never a list of a million strings)."""
    start = 0
    for match in separator.finditer(text):
        yield text[start:match.start()]
        start = match.end()
    yield text[start:]


def _text_documents(path: Path, spec: CorpusSpec, label: str, counter: DecodedCount) -> Iterator[tuple[str, str]]:
    text = read_text_file(path, spec.max_bytes).replace("\r\n", "\n").replace("\r", "\n")
    if spec.txt_mode is TxtMode.FILE:
        counter.add(len(text))
        yield text, label
        return
    # Paragraphs are blank-line separated; a file with no blank line at all (wikitext's raw
    # files) holds one paragraph per line.
    by_paragraph = spec.txt_mode is TxtMode.PARAGRAPHS and _PARAGRAPH_BREAK.search(text) is not None
    for index, paragraph in enumerate(_pieces(text, _PARAGRAPH_BREAK if by_paragraph else _LINE_BREAK)):
        counter.add(len(paragraph))
        yield paragraph, f"{label}#{index}"


def render_messages(messages: list) -> str:
    """Plain-text rendering of chat messages (the tokenizer's chat template is applied later)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "content" in m for m in messages):
        raise CorpusError("A 'messages' field must be a list of {\"role\": ..., \"content\": ...} objects.")
    return "\n\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in messages)


def _record_text(record: object, column: str | None, where: str) -> tuple[str, list | None, str]:
    """The record's text, its chat messages (or None) and the field read ("" for a bare string)."""
    if isinstance(record, str) and column is None:
        return record, None, ""
    if not isinstance(record, dict):
        raise CorpusError(f"{where}: expected a JSON object or string, found {type(record).__name__}.")
    if column is None:
        column = "text" if "text" in record else "messages" if "messages" in record else None
    if column is None or column not in record:
        asked = f"field '{column}'" if column else "'text' or 'messages' field"
        raise CorpusError(f"{where} has no {asked}; its fields: {', '.join(record) or 'none'}. Set the text column.")
    if column == "messages":
        return render_messages(record["messages"]), record["messages"], column
    return str(record[column] or ""), None, column


def json_documents(path: Path, spec: CorpusSpec,
                   counter: DecodedCount) -> tuple[list[tuple[str, str]], dict[str, list] | None, dict]:
    """Documents of a .jsonl/.json file, the raw chat messages when the records are chats, and the
    fields the text was read from."""
    documents, messages, fields = [], [], set()
    for record, where in json_records(path, read_text_file(path, spec.max_bytes), counter, CorpusError):
        text, chat, field = _record_text(record, spec.text_column, where)
        documents.append((text, where))
        messages.append(json.dumps(chat) if chat is not None else None)
        fields.add(field)
    has_chats = any(m is not None for m in messages)
    notes = {"text_fields": sorted(field for field in fields if field)}
    return documents, ({"messages": [m or "" for m in messages]} if has_chats else None), notes


def _picker(requested: str | None, name: str, notes: dict):
    """The text column of a table: the one asked for, one named 'text', or the only text-like one
    (how it was chosen goes into ``notes``)."""

    def pick(columns: list[str], textual: list[str]) -> list[str]:
        if requested is not None:
            if requested not in columns:
                raise CorpusError(f"'{name}' has no column '{requested}'. Its columns: {', '.join(columns)}.")
            chosen, guessed = requested, False
        elif "text" in columns:
            chosen, guessed = "text", False
        elif len(textual) == 1:
            chosen, guessed = textual[0], True
        else:
            raise CorpusError(f"'{name}' has no 'text' column and {len(textual)} text-like columns "
                              f"({', '.join(textual) or 'none'}). Choose the text column.")
        notes.update({"text_column": chosen, "columns": columns, "column_guessed": guessed})
        return [chosen]

    return pick


def table_documents(path: Path, spec: CorpusSpec, counter: DecodedCount) -> tuple[list[tuple[str, str]], dict]:
    notes: dict = {}
    pick = _picker(spec.text_column, path.name, notes)
    limits = guard.current().reading
    if path.suffix.lower() == ".csv":
        table = read_csv(path, read_text_file(path, spec.max_bytes), pick, counter, limits, CorpusError)
    else:
        limits.check_file(path, "file that contains text", spec.max_bytes, error=CorpusError)
        table = read_parquet(path, pick, counter, limits, CorpusError)
    values = table.values[notes["text_column"]]
    # value != value: NaN of whatever type the cell holds (math.isnan would raise on a str)
    documents = [("" if value is None or value != value else str(value), f"{path.name} row {index}")  # noqa: PLR0124
                 for index, value in enumerate(values)]
    return documents, notes


def check_file(path: str | Path) -> Path:
    """What can be refused of a visitor's file without reading it: its path (the guard's policy), its
    size, and, for a table, its header or footer (columns, rows, decompressed sizes). Cheap enough to
    run before a request is queued; the reader counts everything again as it decodes."""
    current = guard.current()
    path = current.upload(path, "file")
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".parquet":
        parquet_footer(path, current.reading.counter(path.name), current.reading, CorpusError)
    elif path.is_file() and suffix == ".csv":
        with path.open(encoding="utf-8", errors="replace", newline="") as handle:
            header = handle.readline()
        if header.count(",") >= current.reading.columns:  # commas inside quotes count too: parse to be sure
            current.reading.check_columns(path.name, len(next(csv.reader([header]), [])))
    return path


def file_documents(spec: CorpusSpec) -> tuple[Iterator[tuple[str, str]] | list, dict[str, list] | None, dict]:
    """(text, source) pairs, optional extra columns and notes for a local file or folder of text files."""
    path = guard.current().policy.upload(spec.name, "corpus file")  # before anything is asked of the path
    if not path.exists():
        raise CorpusError(f"The corpus file '{spec.name}' does not exist. Check the path or upload the file.")
    counter = guard.current().reading.counter(path.name)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise CorpusError(f"The folder '{spec.name}' holds no text files ({', '.join(TEXT_SUFFIXES)}).")
        return (doc for f in files for doc in _text_documents(f, spec, f.relative_to(path).as_posix(), counter)), None, {}
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _text_documents(path, spec, path.name, counter), None, {}
    if suffix in JSON_SUFFIXES:
        return json_documents(path, spec, counter)
    if suffix in TABLE_SUFFIXES:
        documents, notes = table_documents(path, spec, counter)
        return documents, None, notes
    raise CorpusError(f"'{path.name}': files of type '{suffix or 'none'}' are not supported; use {', '.join(SUPPORTED)}.")
