"""How much a file may hold: bytes on disk, and what it decodes to, counted while it is read.

A compressed or dictionary-encoded file can hold far more than its size (a parquet file of 1 kB can
decode to 500 MB), so readers count what they decode as they go and stop at the budget, before the
memory is spent; the file size alone is checked first, before anything is read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import CalibscopeError, OverBudget

MIB = 2**20


def _mib(size: int) -> str:
    return f"{size / MIB:,.1f} MiB"


@dataclass
class DecodedCount:
    """A running count of what one file decoded to; ``add`` raises OverBudget past the limits."""

    name: str
    max_bytes: int
    max_records: int
    bytes: int = 0
    records: int = 0

    def add(self, size: int, records: int = 1) -> None:
        self.bytes += int(size)
        self.records += int(records)
        if self.bytes > self.max_bytes:
            raise OverBudget(f"'{self.name}' decodes to more than {_mib(self.max_bytes)} ({_mib(self.bytes)} after "
                             f"{self.records:,} records, when reading stopped); the limit here is {_mib(self.max_bytes)}. "
                             "Use a smaller file: a few MB of text is plenty for calibration.")
        if self.records > self.max_records:
            raise OverBudget(f"'{self.name}' holds more than {self.max_records:,} records (reading stopped there); "
                             "use a smaller file, or fewer, longer records.")

    def expect(self, size: int, records: int) -> None:
        """Refuse before reading what a file says it holds (a parquet footer's sizes and rows)."""
        if records > self.max_records:
            raise OverBudget(f"'{self.name}' says it holds {records:,} records; at most {self.max_records:,} are read here, "
                             "so it was not read. Use a smaller file: a few MB of text is plenty for calibration.")
        if size > self.max_bytes:
            raise OverBudget(f"'{self.name}' says it holds {_mib(size)} once decompressed; at most {_mib(self.max_bytes)} are "
                             "read here, so it was not read. Use a smaller file: a few MB of text is plenty for calibration.")


@dataclass(frozen=True)
class ReadLimits:
    """file_bytes: size on disk; decoded_bytes: text or ids once decoded; records: rows, documents,
    lines, windows or entries; columns: of a table (a CSV header of commas is millions of columns)."""

    file_bytes: int = 200 * MIB
    decoded_bytes: int = 1024 * MIB
    records: int = 5_000_000
    columns: int = 1_000

    def check_file(self, path: Path, what: str = "file", max_bytes: int | None = None,
                   error: type[CalibscopeError] = OverBudget) -> int:
        """The file's size, refused (as ``error``) when empty or over the limit: the smaller of ours
        and ``max_bytes``."""
        limit = min(self.file_bytes, max_bytes) if max_bytes else self.file_bytes
        size = path.stat().st_size
        if size == 0:
            raise error(f"'{path.name}' is empty (0 bytes). Choose a {what} that holds something.")
        if size > limit:
            raise error(f"'{path.name}' is {_mib(size)}; the limit is {_mib(limit)}. Use a smaller file (a few MB "
                        "of text is plenty for calibration).")
        return size

    def counter(self, name: str) -> DecodedCount:
        return DecodedCount(name, self.decoded_bytes, self.records)

    def check_columns(self, name: str, columns: int) -> None:
        if columns > self.columns:
            raise OverBudget(f"'{name}' has {columns:,} columns; at most {self.columns:,} are read. Is it the file you meant?")
