"""Files that expand: each reader refuses what a file decodes to past the read limits, before the
memory is spent, and says what it read and what the limit is; parsers never loop on a forged length."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine import CorpusSpec, guard, load_corpus
from engine.errors import CalibscopeError, OverBudget
from engine.guard import Guard, ReadLimits, resident_bytes
from engine.imatrix import read_imatrix
from engine.sampling.supplied import read_windows

MIB = 2**20
SHARED_LIKE = Guard(reading=ReadLimits(file_bytes=20 * MIB, decoded_bytes=64 * MIB, records=200_000))


def expanding_parquet(path: Path, rows: int, value: str, **options) -> Path:
    """A tiny file of ``rows`` equal strings: dictionary-encoded and compressed, it decodes to rows x len(value)."""
    pq.write_table(pa.table({"text": pa.array([value] * 8, pa.string())}).take([0] * rows) if rows <= 8 else
                   pa.table({"text": pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)),
                                                                    pa.array([value]))}),
                   path, compression="zstd", **options)
    return path


def test_a_parquet_file_of_a_few_kilobytes_that_decodes_to_half_a_gigabyte_is_refused_from_its_footer(tmp_path):
    path = expanding_parquet(tmp_path / "bomb.parquet", 1_000_000, "x" * 500)  # 500 MB of text
    assert path.stat().st_size < 64 * 1024
    before = resident_bytes()
    started = time.perf_counter()
    with guard.guarded(SHARED_LIKE), pytest.raises(OverBudget) as refused:
        load_corpus(CorpusSpec.file(path))
    assert time.perf_counter() - started < 10
    assert resident_bytes() - before < 200 * MIB
    message = str(refused.value)
    assert "bomb.parquet" in message and "64.0 MiB" in message and "1,000,000 records" not in message or "records" in message


def test_a_parquet_file_whose_footer_is_within_the_limit_is_still_counted_row_by_row(tmp_path):
    """Delta-encoded strings share their prefix with the row before: a small decompressed chunk decodes
    to far more; reading stops once the running count passes the limit."""
    value = "y" * 50_000
    table = pa.table({"text": pa.array([value + str(i % 10) for i in range(5_000)])})  # 250 MB decoded
    path = tmp_path / "delta.parquet"
    pq.write_table(table, path, use_dictionary=False, column_encoding={"text": "DELTA_BYTE_ARRAY"}, compression="zstd")
    assert path.stat().st_size < 2 * MIB
    with guard.guarded(SHARED_LIKE), pytest.raises(OverBudget, match="64.0 MiB"):
        load_corpus(CorpusSpec.file(path))


def test_a_malformed_parquet_footer_is_refused_without_taking_the_process_down(tmp_path):
    path = tmp_path / "damaged.parquet"
    pq.write_table(pa.table({"text": ["some text long enough"] * 10}), path)
    data = bytearray(path.read_bytes())
    data[-371] ^= 0x7F  # inside the footer's column metadata: pyarrow 26 calls abort() reading it
    path.write_bytes(bytes(data))
    with pytest.raises(CalibscopeError, match="damaged.parquet"):
        load_corpus(CorpusSpec.file(path))
    assert len(load_corpus(CorpusSpec.builtin("python-docs"))) > 0  # this process is still here, serving


def test_a_csv_header_of_commas_is_refused_before_pandas_makes_its_columns(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("," * 2_000_000 + "\n")
    started = time.perf_counter()
    with guard.guarded(SHARED_LIKE), pytest.raises(OverBudget, match="2,000,001 columns"):
        load_corpus(CorpusSpec.file(path))
    assert time.perf_counter() - started < 5


def test_a_text_file_of_millions_of_lines_stops_at_the_record_limit(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("a line of text\n" * 1_000_000)
    with guard.guarded(SHARED_LIKE), pytest.raises(OverBudget, match="more than 200,000 records"):
        load_corpus(CorpusSpec.file(path))


def test_a_json_array_is_parsed_element_by_element_and_stops_at_the_limit(tmp_path):
    path = tmp_path / "many.json"
    path.write_text(json.dumps([{"text": "a record of text"}] * 300_000))
    before = resident_bytes()
    with guard.guarded(SHARED_LIKE), pytest.raises(OverBudget, match="more than 200,000 records"):
        load_corpus(CorpusSpec.file(path))
    assert resident_bytes() - before < 300 * MIB


def test_token_windows_that_expand_are_refused_and_leave_no_cache_copy(tmp_path, monkeypatch):
    cache = tmp_path / "datasets-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    path = tmp_path / "windows.parquet"
    pq.write_table(pa.table({"input_ids": [[0] * 10_000_000]}), path, compression="zstd")  # 80 MB of ids in a tiny file
    assert path.stat().st_size < 4 * MIB
    with guard.guarded(SHARED_LIKE), pytest.raises(OverBudget, match="windows.parquet"):
        read_windows(path)
    small = tmp_path / "small.parquet"
    pq.write_table(pa.table({"input_ids": [[1, 2, 3], [1, 4]]}), small)
    assert [w.tolist() for w in read_windows(small)] == [[1, 2, 3], [1, 4]]
    assert not cache.exists() or not any(cache.rglob("*.arrow"))


def test_a_npy_header_that_does_not_match_its_data_is_refused(tmp_path):
    path = tmp_path / "windows.npy"
    np.save(path, np.ones((2, 4), dtype=np.int64))
    data = path.read_bytes().replace(b"(2, 4)", b"(9, 9)")
    path.write_bytes(data)
    with pytest.raises(CalibscopeError, match=r"says it holds \(9, 9\)"):
        read_windows(path)


def test_a_legacy_imatrix_with_a_negative_name_length_is_refused_at_once(tmp_path):
    """24 bytes that made the old reader stay at one offset for up to 2^31 iterations."""
    path = tmp_path / "loop.dat"
    path.write_bytes(struct.pack("<ii", 2**31 - 1, -16) + b"\x00" * 8 + struct.pack("<ii", 1, 1))
    assert path.stat().st_size == 24
    started = time.perf_counter()
    with pytest.raises(CalibscopeError, match="neither a GGUF nor a legacy imatrix"):
        read_imatrix(path)
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize("fields", [(1, 5, b"blk.0", 1, 2**30), (1, 5, b"blk.0", -3, 4), (1, 2**30, b"blk.0", 1, 4)])
def test_every_legacy_length_is_checked_against_the_bytes_that_remain(tmp_path, fields):
    entries, length, name, calls, values = fields
    path = tmp_path / "forged.dat"
    path.write_bytes(struct.pack("<ii", entries, length) + name + struct.pack("<ii", calls, values) + b"\x00" * 16)
    with pytest.raises(CalibscopeError, match="neither a GGUF nor a legacy imatrix"):
        read_imatrix(path)
