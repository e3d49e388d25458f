"""Every reader of a visitor's file (and of a run config), fuzzed: arbitrary bytes and mutations of valid files give a
result or a CalibscopeError (never another exception, never a hang), in bounded time and memory.

Memory is measured per example: Python and numpy allocations with tracemalloc, Arrow's with a
proxy memory pool of its own. The readers run under a guard whose read limits are small, so what a
file decodes to must be refused at those limits, not after it has been allocated.
"""
from __future__ import annotations

import functools
import io
import json
import os
import struct
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import CorpusSpec, guard, load_corpus
from engine.errors import CalibscopeError
from engine.guard import Guard, ReadLimits
from engine.imatrix import Imatrix, read_imatrix, write_imatrix
from engine.imatrix.matrix import ImatrixEntry
from engine.pipeline import load_config
from engine.sampling.supplied import read_windows

MIB = 2**20
LIMITS = ReadLimits(file_bytes=MIB, decoded_bytes=4 * MIB, records=20_000, columns=64)
MAX_SECONDS = 10.0
MAX_ALLOCATED = 64 * MIB  # what one file of at most 1 MiB may make the reader allocate, at its peak
EXAMPLES = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], derandomize=True)


def _parquet(table: pa.Table, **options) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def _torch(value) -> bytes:
    sink = io.BytesIO()
    torch.save(value, sink)
    return sink.getvalue()


def _npy(array: np.ndarray) -> bytes:
    sink = io.BytesIO()
    np.save(sink, array)
    return sink.getvalue()


def _imatrix(suffix: str, tmp: Path) -> bytes:
    entries = {f"blk.{i}.ffn_down.weight": ImatrixEntry(np.arange(1, 9, dtype=np.float32).reshape(1, 8) * (i + 1),
                                                         np.array([64.0])) for i in range(3)}
    path = write_imatrix(Imatrix(entries, datasets=["fuzz"], chunk_count=2, chunk_size=32), tmp / f"seed{suffix}")
    return path.read_bytes()


TEXT = "A paragraph about calibration data, long enough to be kept as a document.\n\n" * 20
WINDOWS = [[1, 5, 6, 7, 8], [1, 9, 10, 11]]


def corpus_seeds(tmp: Path) -> dict[str, bytes]:
    table = pa.table({"text": [TEXT[:200]] * 10, "n": list(range(10))})
    return {".txt": TEXT.encode(), ".jsonl": "".join(json.dumps({"text": TEXT[:120]}) + "\n" for _ in range(5)).encode(),
            ".json": json.dumps([{"text": TEXT[:120]}] * 5).encode(), ".csv": ("text,n\n" + "".join(
                f'"{TEXT[:80].strip()}",{i}\n' for i in range(5))).encode(), ".parquet": _parquet(table)}


def windows_seeds(tmp: Path) -> dict[str, bytes]:
    return {".parquet": _parquet(pa.table({"input_ids": WINDOWS, "attention_mask": [[1] * 5, [1] * 4]})),
            ".jsonl": "".join(json.dumps({"input_ids": w}) + "\n" for w in WINDOWS).encode(),
            ".json": json.dumps([{"input_ids": w} for w in WINDOWS]).encode(),
            ".npy": _npy(np.array([[1, 5, 6, 7], [1, 9, 10, 11]], dtype=np.int64)),
            ".pt": _torch(torch.tensor([[1, 5, 6, 7], [1, 9, 10, 11]]))}


def config_seeds(tmp: Path) -> dict[str, bytes]:
    toml = (Path(__file__).resolve().parents[1] / "assets" / "example-run.toml").read_bytes()
    runs = {"output": "out", "model": {"name": "tiny-random-llama"}, "sampling": {"strategy": "random", "nsamples": 4},
            "quantize": [{"scheme": "W4 g128 GPTQ"}, {"weights": {"method": "rtn", "bits": 3}, "save": "w3"}]}
    return {".toml": toml + b'\n[[quantize]]\nscheme = "W4 g128 RTN"\n', ".json": json.dumps(runs).encode()}


def imatrix_seeds(tmp: Path) -> dict[str, bytes]:
    return {".gguf": _imatrix(".gguf", tmp), ".dat": _imatrix(".dat", tmp)}


INTERESTING = [0, 1, -1, 2**31 - 1, -(2**31), 2**16, 2**24, 7]


@st.composite
def mutations(draw, seed: bytes) -> bytes:
    """``seed`` with up to eight edits: flipped bytes, inserted or removed runs, a truncation, or an
    int32 overwritten with a value that breaks length fields."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "int"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 32))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "int" and len(data) >= at + 4:
            data[at:at + 4] = struct.pack("<i", draw(st.sampled_from(INTERESTING)))
    return bytes(data)


@contextmanager
def measured():
    """Yields a dict filled with the call's seconds and peak allocations (traced and Arrow's)."""
    pool = pa.proxy_memory_pool(pa.default_memory_pool())
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    tracemalloc.start()
    found: dict = {}
    started = time.perf_counter()
    try:
        yield found
    finally:
        found["seconds"] = time.perf_counter() - started
        found["allocated"] = tracemalloc.get_traced_memory()[1] + pool.max_memory()
        tracemalloc.stop()
        pa.set_memory_pool(previous)


def read_bounded(read, path: Path, data: bytes) -> None:
    path.write_bytes(data)
    with guard.guarded(Guard(reading=LIMITS)), measured() as found:
        try:
            read(path)
        except CalibscopeError:
            pass
    assert found["seconds"] < MAX_SECONDS, (path.name, found)
    assert found["allocated"] < MAX_ALLOCATED, (path.name, found)


READERS = {"config": (load_config, config_seeds),
           "corpus": (lambda path: load_corpus(CorpusSpec.file(path)), corpus_seeds),
           "windows": (read_windows, windows_seeds),
           "imatrix": (read_imatrix, imatrix_seeds)}
SUFFIXES = {"config": (".toml", ".json"), "corpus": (".txt", ".jsonl", ".json", ".csv", ".parquet"),
            "windows": (".parquet", ".jsonl", ".json", ".npy", ".pt"), "imatrix": (".gguf", ".dat")}
CASES = [(reader, suffix) for reader, suffixes in SUFFIXES.items() for suffix in suffixes]


@functools.cache
def seed(reader: str, suffix: str) -> bytes:
    """A valid file of ``reader``'s kind (made once; a module function, so hypothesis does not print them all)."""
    with tempfile.TemporaryDirectory() as tmp:
        return READERS[reader][1](Path(tmp))[suffix]


@pytest.mark.parametrize("reader, suffix", CASES)
def test_the_seed_files_are_read(tmp_path, reader, suffix):
    """The unmutated files are valid: the fuzzing starts from files each reader accepts."""
    read, _ = READERS[reader]
    path = tmp_path / f"seed{suffix}"
    path.write_bytes(seed(reader, suffix))
    with guard.guarded(Guard(reading=LIMITS)):
        assert read(path) is not None


@pytest.mark.parametrize("reader, suffix", CASES)
@EXAMPLES
@given(data=st.data())
def test_mutated_files_give_a_result_or_a_clear_error(tmp_path, reader, suffix, data):
    read, _ = READERS[reader]
    read_bounded(read, tmp_path / f"mutated{suffix}", data.draw(mutations(seed(reader, suffix))))


@pytest.mark.parametrize("reader, suffix", CASES)
@EXAMPLES
@given(payload=st.binary(min_size=1, max_size=4096))
def test_arbitrary_bytes_give_a_result_or_a_clear_error(tmp_path, reader, suffix, payload):
    read, _ = READERS[reader]
    read_bounded(read, tmp_path / f"bytes{suffix}", payload)
