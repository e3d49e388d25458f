"""Bounded readers of table-like files: parquet, CSV, JSON and JSON Lines.

What a file decodes to is counted while it is read, against the guard's ``ReadLimits``, and
reading stops at the limit: a parquet file of a kilobyte can hold half a gigabyte of text (its
pages compressed, its values dictionary- or delta-encoded), and a CSV header of commas is millions
of columns. Parquet is read by ``parquet_worker.py`` in a process of its own with capped memory and
time (pyarrow aborts the process on some malformed footers): its footer's rows and decompressed
sizes are checked first, then rows are decoded in batches that cannot exceed the memory left.
Nothing is copied to any cache.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import CalibscopeError, OverBudget
from engine.guard import DecodedCount, ReadLimits, run_isolated

BATCH_BYTES = 16 * 2**20  # the most one decoded batch of parquet rows may take
# pyarrow's default allocator (jemalloc) reserves address space in large steps, so a capped worker
# fails at unpredictable points; the system allocator makes the cap mean what it says
WORKER_ENVIRONMENT = {"ARROW_DEFAULT_MEMORY_POOL": "system"}
PARQUET_WORKER = Path(__file__).with_name("parquet_worker.py")
PARQUET_SECONDS = 60.0

# (every column name, the names that hold text) -> the columns to read
Pick = Callable[[list[str], list[str]], list[str]]


@dataclass(frozen=True)
class Columns:
    """The picked columns' values (text as str, lists of ids as int64 arrays) and every column's name."""

    names: list[str]
    values: dict[str, list]


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def _ask(path: Path, request: dict, limits: ReadLimits, error: type[CalibscopeError]) -> dict:
    """The parquet worker's answer; its failures as ``error`` naming the file."""
    answer = run_isolated(PARQUET_WORKER, {"path": str(path), **request}, 2 * limits.decoded_bytes + BATCH_BYTES,
                          PARQUET_SECONDS, f"'{path.name}'", WORKER_ENVIRONMENT)
    if "error" in answer:
        raise error(f"Could not read '{path.name}' as parquet: {answer['error']}")
    if answer.get("over_memory"):
        raise OverBudget(f"Reading '{path.name}' needs more memory than allowed here; use a smaller file.")
    return answer


def parquet_footer(path: Path, counter: DecodedCount, limits: ReadLimits, error: type[CalibscopeError]) -> dict:
    """A parquet file's schema and sizes by its footer, refused when its columns or rows are more than
    the limits allow, or when no column it holds fits them once decompressed: what can be known
    without decoding a row (a check cheap enough to run before a request is queued)."""
    schema = _ask(path, {"action": "schema"}, limits, error)
    limits.check_columns(path.name, len(schema["columns"]))
    sizes = [size for name, size in schema["decompressed"].items() if name in {*schema["textual"], *schema["lists"]}]
    counter.expect(min(sizes, default=0), schema["rows"])
    return schema


def read_parquet(path: Path, pick: Pick, counter: DecodedCount, limits: ReadLimits,
                 error: type[CalibscopeError]) -> Columns:
    """The picked columns of a parquet file (text as str, lists of ids as int64 arrays), read by the
    isolated worker: the footer's rows and decompressed sizes checked first, then rows decoded in
    batches no larger than BATCH_BYTES and counted."""
    schema = parquet_footer(path, counter, limits, error)
    picked = pick(schema["columns"], schema["textual"])
    answer = _ask(path, {"action": "read", "columns": picked, "max_bytes": counter.max_bytes - counter.bytes,
                         "max_records": counter.max_records - counter.records, "batch_bytes": BATCH_BYTES}, limits, error)
    if "over" in answer:
        over = answer["over"]
        if over["when"] == "footer":
            counter.expect(over["bytes"], over["records"])
        counter.add(over["bytes"], over["records"])
    counter.add(answer["bytes"], answer["records"])
    lists = set(schema["lists"])
    values = {name: [None if row is None else np.asarray(row, dtype=np.int64) for row in column] if name in lists else column
              for name, column in answer["values"].items()}
    return Columns(schema["columns"], values)


def _csv_header(text: str, name: str, limits: ReadLimits, error: type[CalibscopeError]) -> list[str]:
    try:
        header = next(csv.reader(io.StringIO(text)), [])
    except csv.Error as problem:
        raise error(f"Could not read '{name}' as CSV: {problem}") from None
    limits.check_columns(name, len(header))
    return header


def read_csv(path: Path, text: str, pick: Pick, counter: DecodedCount, limits: ReadLimits,
             error: type[CalibscopeError]) -> Columns:
    """The picked columns of CSV ``text`` (the file's, already size-checked and decoded): the
    header is checked before pandas sees it, and only the picked columns are kept."""
    import pandas as pd

    header = _csv_header(text, path.name, limits, error)
    try:
        first = pd.read_csv(io.StringIO(text), nrows=1000)
        names = [str(column) for column in first.columns][:len(header) or None]
        textual = [str(c) for c in first.columns if first[c].dtype == object or str(first[c].dtype).startswith("str")]
        picked = pick(names, textual)
        values: dict[str, list] = {name: [] for name in picked}
        for chunk in pd.read_csv(io.StringIO(text), usecols=picked, chunksize=10_000, dtype=str, keep_default_na=False):
            for name in picked:
                column = chunk[name].tolist()
                counter.add(sum(len(value) for value in column), 0)
                values[name].extend(column)
            counter.add(0, len(chunk))
    except CalibscopeError:
        raise
    except (ValueError, TypeError, IndexError, csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError) as problem:
        raise error(f"Could not read '{path.name}' as CSV: {_first_line(problem)}") from None
    return Columns(names, values)


def _array_elements(text: str, start: int, decoder: json.JSONDecoder) -> Iterator[tuple[object, int]]:
    """The elements of the JSON array that opens at ``start``, one at a time, with their text length."""
    position = start + 1
    length = len(text)

    def skip(at: int) -> int:
        while at < length and text[at] in " \t\r\n":
            at += 1
        return at

    position = skip(position)
    if position < length and text[position] == "]":
        return
    while True:
        element, end = decoder.raw_decode(text, skip(position))
        yield element, end - position
        position = skip(end)
        if position >= length:
            raise json.JSONDecodeError("the array is not closed", text, position)
        if text[position] == "]":
            return
        if text[position] != ",":
            raise json.JSONDecodeError("expected ',' or ']'", text, position)
        position += 1


def json_records(path: Path, text: str, counter: DecodedCount, error: type[CalibscopeError]) -> Iterator[tuple[object, str]]:
    """(record, where) of JSON Lines, of a JSON array (parsed element by element, so a count past the
    limit stops it early) or of one object holding a single list; counted as they are parsed."""
    decoder = json.JSONDecoder()
    opening = len(text) - len(text.lstrip())
    whole_value = path.suffix == ".json" and opening < len(text) and text[opening] in "[{"
    if whole_value and text[opening] == "[":
        try:
            for index, (record, size) in enumerate(_array_elements(text, opening, decoder)):
                counter.add(size)
                yield record, f"{path.name} record {index}"
            return
        except json.JSONDecodeError as problem:
            if not _is_json_lines(text):
                raise error(f"{path.name} is not valid JSON ({problem.msg} at line {problem.lineno}).") from None
    elif whole_value and not _is_json_lines(text):
        try:
            loaded = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as problem:
            raise error(f"{path.name} is not valid JSON ({getattr(problem, 'msg', 'nested too deeply')}).") from None
        lists = [value for value in loaded.values() if isinstance(value, list)] if isinstance(loaded, dict) else []
        if len(lists) != 1:
            raise error(f"{path.name} must hold a list of records (or one object with a single list).")
        for index, record in enumerate(lists[0]):
            counter.add(0)
            yield record, f"{path.name} record {index}"
        return
    yield from _json_lines(path, text, counter, decoder, error)


def _is_json_lines(text: str) -> bool:
    """Several JSON values, one per line (what ``Dataset.to_json`` writes, also into a .json file)."""
    lines = [line for line in text.splitlines()[:3] if line.strip()]
    if len(lines) < 2:
        return False
    try:
        return all(isinstance(json.loads(line), (dict, list)) for line in lines)
    except (json.JSONDecodeError, RecursionError):
        return False


def _json_lines(path: Path, text: str, counter: DecodedCount, decoder: json.JSONDecoder,
                error: type[CalibscopeError]) -> Iterator[tuple[object, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        counter.add(len(line))
        try:
            yield decoder.decode(line), f"{path.name} line {number}"
        except json.JSONDecodeError as problem:
            raise error(f"{path.name} line {number} is not valid JSON ({problem.msg}). Fix or remove it.") from None
        except RecursionError:
            raise error(f"{path.name} line {number} is nested too deeply to be a record.") from None
