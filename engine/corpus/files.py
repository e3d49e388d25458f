"""Local corpus files: .txt (or a folder of them), .jsonl/.json (text or chat messages), .csv, .parquet.

Every way a file can be unusable (missing, too large, empty, binary, not UTF-8, invalid JSON, no
such column) raises CorpusError naming the file, the problem and the fix.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from engine.errors import CorpusError
from engine.specs import CorpusSpec, TxtMode

TEXT_SUFFIXES = (".txt", ".text", ".md", ".raw")
TABLE_SUFFIXES = (".csv", ".parquet")
JSON_SUFFIXES = (".jsonl", ".json")
SUPPORTED = TEXT_SUFFIXES + JSON_SUFFIXES + TABLE_SUFFIXES
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def _check_size(path: Path, max_bytes: int) -> None:
    size = path.stat().st_size
    if size == 0:
        raise CorpusError(f"'{path.name}' is empty (0 bytes). Choose a file that contains text.")
    if size > max_bytes:
        raise CorpusError(
            f"'{path.name}' is {size / 2**20:,.1f} MiB; the limit is {max_bytes / 2**20:,.1f} MiB. "
            "Use a smaller file (a few MB of text is plenty for calibration) or raise the limit."
        )


def read_text_file(path: Path, max_bytes: int) -> str:
    """The file's text, refusing binary and non-UTF-8 content with a precise message."""
    _check_size(path, max_bytes)
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


def _text_documents(path: Path, spec: CorpusSpec, label: str) -> Iterator[tuple[str, str]]:
    text = read_text_file(path, spec.max_bytes).replace("\r\n", "\n").replace("\r", "\n")
    if spec.txt_mode is TxtMode.FILE:
        yield text, label
        return
    # Paragraphs are blank-line separated; a file with no blank line at all (wikitext's raw
    # files) holds one paragraph per line.
    pieces = _PARAGRAPH_BREAK.split(text) if spec.txt_mode is TxtMode.PARAGRAPHS else []
    if len(pieces) <= 1:
        pieces = text.split("\n")
    for index, paragraph in enumerate(pieces):
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


def _json_records(path: Path, max_bytes: int) -> list[tuple[object, str]]:
    text = read_text_file(path, max_bytes)
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((json.loads(line), f"{path.name} line {number}"))
            except json.JSONDecodeError as error:
                raise CorpusError(f"{path.name} line {number} is not valid JSON ({error.msg}). Fix or remove it.") from None
        return records
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as error:
        raise CorpusError(f"{path.name} is not valid JSON ({error.msg} at line {error.lineno}).") from None
    if isinstance(loaded, dict):  # {"data": [...]} or {"train": [...]}: take the single list inside
        lists = [value for value in loaded.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise CorpusError(f"{path.name} must hold a list of records (or one object with a single list).")
        loaded = lists[0]
    if not isinstance(loaded, list):
        raise CorpusError(f"{path.name} must hold a list of records, found {type(loaded).__name__}.")
    return [(record, f"{path.name} record {index}") for index, record in enumerate(loaded)]


def json_documents(path: Path, spec: CorpusSpec) -> tuple[list[tuple[str, str]], dict[str, list] | None, dict]:
    """Documents of a .jsonl/.json file, the raw chat messages when the records are chats, and the
    fields the text was read from."""
    documents, messages, fields = [], [], set()
    for record, where in _json_records(path, spec.max_bytes):
        text, chat, field = _record_text(record, spec.text_column, where)
        documents.append((text, where))
        messages.append(json.dumps(chat) if chat is not None else None)
        fields.add(field)
    has_chats = any(m is not None for m in messages)
    notes = {"text_fields": sorted(field for field in fields if field)}
    return documents, ({"messages": [m or "" for m in messages]} if has_chats else None), notes


def _pick_column(frame, requested: str | None, name: str) -> tuple[str, dict]:
    """The text column and how it was chosen (asked for, named 'text', or guessed as the only text-like one)."""
    columns = [str(c) for c in frame.columns]
    if requested is not None:
        if requested not in columns:
            raise CorpusError(f"'{name}' has no column '{requested}'. Its columns: {', '.join(columns)}.")
        return requested, {"text_column": requested, "columns": columns, "column_guessed": False}
    if "text" in columns:
        return "text", {"text_column": "text", "columns": columns, "column_guessed": False}
    textual = [c for c in columns if frame[c].dtype == object or str(frame[c].dtype).startswith("str")]
    if len(textual) == 1:
        return textual[0], {"text_column": textual[0], "columns": columns, "column_guessed": True}
    raise CorpusError(
        f"'{name}' has no 'text' column and {len(textual)} text-like columns ({', '.join(textual) or 'none'}). "
        "Choose the text column."
    )


def table_documents(path: Path, spec: CorpusSpec) -> tuple[list[tuple[str, str]], dict]:
    _check_size(path, spec.max_bytes)
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except UnicodeDecodeError:
        raise CorpusError(f"'{path.name}' is not UTF-8 text. Save it as UTF-8.") from None
    except Exception as error:  # parser errors differ by engine; the message is what matters
        raise CorpusError(f"Could not read '{path.name}' as {path.suffix[1:]}: {str(error).splitlines()[0]}") from None
    column, notes = _pick_column(frame, spec.text_column, path.name)
    documents = [("" if value is None or value != value else str(value), f"{path.name} row {index}")
                 for index, value in enumerate(frame[column].tolist())]
    return documents, notes


def file_documents(spec: CorpusSpec) -> tuple[Iterator[tuple[str, str]] | list, dict[str, list] | None, dict]:
    """(text, source) pairs, optional extra columns and notes for a local file or folder of text files."""
    path = Path(spec.name).expanduser()
    if not path.exists():
        raise CorpusError(f"The corpus file '{spec.name}' does not exist. Check the path or upload the file.")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise CorpusError(f"The folder '{spec.name}' holds no text files ({', '.join(TEXT_SUFFIXES)}).")
        return (doc for f in files for doc in _text_documents(f, spec, f.relative_to(path).as_posix())), None, {}
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return _text_documents(path, spec, path.name), None, {}
    if suffix in JSON_SUFFIXES:
        return json_documents(path, spec)
    if suffix in TABLE_SUFFIXES:
        documents, notes = table_documents(path, spec)
        return documents, None, notes
    raise CorpusError(f"'{path.name}': files of type '{suffix or 'none'}' are not supported; use {', '.join(SUPPORTED)}.")
