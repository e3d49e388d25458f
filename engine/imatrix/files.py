"""Reading and writing importance matrices in llama.cpp's two formats.

GGUF (``llama-imatrix`` since 2025): ``general.type = "imatrix"``, ``imatrix.datasets`` (strings),
``imatrix.chunk_count`` and ``imatrix.chunk_size`` (u32), and per weight ``<name>.in_sum2`` (F32,
ggml shape [channels, n_mat]) and ``<name>.counts`` (F32, [1, n_mat]), names sorted.

Legacy ``.dat``: int32 n_entries; per entry int32 name length, the name, int32 ncall, int32 nval,
nval float32 = mean x² x ncall (ncall = ceil(max count / chunk size); a row without tokens is
stored as 1 x ncall); then int32 chunk count and the dataset name (length-prefixed), both optional.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from engine import guard
from engine.errors import CalibscopeError
from engine.imatrix.matrix import Imatrix, ImatrixEntry

KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
GGUF_MAGIC = b"GGUF"


def write_gguf(imatrix: Imatrix, path: str | Path) -> Path:
    """The GGUF imatrix llama-imatrix writes (same keys, tensors, order and types)."""
    import gguf

    class ImatrixWriter(gguf.GGUFWriter):
        def add_architecture(self) -> None:  # the writer adds one on creation; llama-imatrix writes none
            pass

    path = Path(path)
    writer = ImatrixWriter(str(path), arch="")
    writer.add_type(gguf.GGUFType.IMATRIX)
    writer.add_array(KEY_DATASETS, list(imatrix.datasets) or ["calibscope"])
    writer.add_uint32(KEY_CHUNK_COUNT, int(imatrix.chunk_count))
    writer.add_uint32(KEY_CHUNK_SIZE, int(imatrix.chunk_size))
    for name in sorted(imatrix.entries):
        entry = imatrix.entries[name]
        writer.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(entry.sums, dtype=np.float32))
        writer.add_tensor(f"{name}.counts", entry.counts.astype(np.float32).reshape(-1, 1))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_gguf(path: str | Path) -> Imatrix:
    """A GGUF importance matrix; a file gguf's reader cannot parse is refused with its reason."""
    try:
        return _read_gguf(path)
    except CalibscopeError:
        raise
    except Exception as error:  # noqa: BLE001 - a forged file fails inside gguf's reader in many ways; all mean "not readable"
        raise CalibscopeError(f"'{Path(path).name}' is not a readable GGUF importance matrix "
                              f"({type(error).__name__}: {str(error)[:160]}).") from None


def _read_gguf(path: str | Path) -> Imatrix:
    import gguf

    reader = gguf.GGUFReader(str(path))
    kind = reader.fields.get(gguf.Keys.General.TYPE)
    if kind is None or kind.contents() != gguf.GGUFType.IMATRIX:
        found = kind.contents() if kind is not None else "none"
        raise CalibscopeError(f"'{Path(path).name}' is a GGUF file but not an importance matrix (general.type: {found}).")
    sums, counts = {}, {}
    for tensor in reader.tensors:
        stem, _, suffix = tensor.name.rpartition(".")
        target = {"in_sum2": sums, "counts": counts}.get(suffix)
        if target is not None:
            target[stem] = np.array(tensor.data, dtype=np.float32).reshape(
                int(tensor.shape[-1]) if len(tensor.shape) > 1 else 1, -1)
    unmatched = sorted(set(sums) ^ set(counts))
    if unmatched:
        raise CalibscopeError(f"'{Path(path).name}' has sums without counts or counts without sums (e.g. {unmatched[0]}).")

    def field(key, default):
        return reader.fields[key].contents() if key in reader.fields else default

    entries = {name: ImatrixEntry(sums[name], np.rint(counts[name].reshape(-1))) for name in sums}
    return Imatrix(entries, datasets=list(field(KEY_DATASETS, [])), chunk_count=int(field(KEY_CHUNK_COUNT, 0)),
                   chunk_size=int(field(KEY_CHUNK_SIZE, 0)), origin=str(path))


def legacy_calls(entry: ImatrixEntry, chunk_size: int) -> int:
    """llama-imatrix's ncall: the largest count in chunks, rounded up."""
    return int(-(-int(entry.counts.max()) // chunk_size)) if chunk_size else 1


def write_legacy(imatrix: Imatrix, path: str | Path) -> Path:
    """The legacy ``.dat`` llama-imatrix writes with ``--output-format dat``."""
    if imatrix.chunk_size <= 0:
        raise CalibscopeError("A legacy imatrix file needs the chunk size the matrix was collected with.")
    path = Path(path)
    chunks = []
    for name in sorted(imatrix.entries):
        entry = imatrix.entries[name]
        ncall = legacy_calls(entry, imatrix.chunk_size)
        counts = np.repeat(entry.counts.astype(np.float32), entry.channels)
        values = entry.sums.reshape(-1).astype(np.float32)
        empty = counts == 0
        values, counts = np.where(empty, np.float32(1), values), np.where(empty, np.float32(1), counts)
        stored = (values / counts * np.float32(ncall)).astype("<f4")
        encoded = name.encode()
        chunks.append(struct.pack("<i", len(encoded)) + encoded + struct.pack("<ii", ncall, stored.size) + stored.tobytes())
    dataset = (imatrix.datasets[-1] if imatrix.datasets else "calibscope").encode()
    path.write_bytes(struct.pack("<i", len(chunks)) + b"".join(chunks)
                     + struct.pack("<ii", int(imatrix.chunk_count), len(dataset)) + dataset)
    return path


def _legacy_int(data: bytes, offset: int, what: str, smallest: int = 0) -> int:
    """A little-endian int32 at ``offset`` that must be at least ``smallest`` and fit in what remains."""
    if offset + 4 > len(data):
        raise ValueError(f"the file ends where the {what} should be (byte {offset:,})")
    (value,) = struct.unpack_from("<i", data, offset)
    if value < smallest:
        raise ValueError(f"the {what} is {value} at byte {offset:,}")
    return value


def read_legacy(path: str | Path, chunk_size: int = 512) -> Imatrix:
    """A legacy file. It stores means, not sums: sums and counts are rebuilt as llama.cpp does when
    it merges one (count = ncall x ``chunk_size``), so importances are exact and counts nominal.
    A legacy file has one count per tensor, so experts are indistinguishable in it. Every length
    and count is checked against the bytes that remain before it is used, so a forged file cannot
    make the reader loop or allocate beyond the file."""
    data = Path(path).read_bytes()
    name = Path(path).name
    try:
        n_entries, offset = _legacy_int(data, 0, "number of entries"), 4
        if n_entries * 13 > len(data) - offset:  # an entry takes at least 13 bytes: three ints and one name byte
            raise ValueError(f"{n_entries:,} entries cannot fit in {len(data):,} bytes")
        entries = {}
        for _ in range(n_entries):
            length = _legacy_int(data, offset, "name length", smallest=1)
            if offset + 4 + length + 8 > len(data):
                raise ValueError(f"a name of {length:,} bytes at byte {offset:,} runs past the end of the file")
            tensor = data[offset + 4:offset + 4 + length].decode()
            ncall = _legacy_int(data, offset + 4 + length, f"call count of {tensor}", smallest=1)
            nval = _legacy_int(data, offset + 8 + length, f"value count of {tensor}", smallest=1)
            offset += 12 + length
            if offset + 4 * nval > len(data):
                raise ValueError(f"{tensor} has {nval:,} values but only {len(data) - offset:,} bytes remain")
            values = np.frombuffer(data, dtype="<f4", count=nval, offset=offset).astype(np.float32)
            offset += 4 * nval
            count = ncall * chunk_size
            entries[tensor] = ImatrixEntry(values.reshape(1, -1) / np.float32(ncall) * np.float32(count), np.array([count]))
        chunk_count, datasets = 0, []
        if offset + 4 <= len(data):
            (chunk_count,) = struct.unpack_from("<i", data, offset)
            if offset + 8 <= len(data):
                (length,) = struct.unpack_from("<i", data, offset + 4)
                datasets = [data[offset + 8:offset + 8 + length].decode(errors="replace")] if length > 0 else []
    except (struct.error, ValueError, UnicodeDecodeError) as error:
        raise CalibscopeError(f"'{name}' is neither a GGUF nor a legacy imatrix file ({error}).") from None
    return Imatrix(entries, datasets=datasets, chunk_count=chunk_count, chunk_size=0, origin=str(path))


def read_imatrix(path: str | Path, chunk_size: int = 512) -> Imatrix:
    """Either format, told apart by the GGUF magic as llama.cpp does; the path through the guard (on
    a shared Space, the visitor's own upload) and its size within the read limits."""
    path = guard.current().policy.upload(path, "imatrix file")
    if not path.is_file():
        raise CalibscopeError(f"No imatrix file at '{path}'.")
    guard.current().reading.check_file(path, "imatrix file", error=CalibscopeError)
    with path.open("rb") as handle:
        magic = handle.read(4)
    return read_gguf(path) if magic == GGUF_MAGIC else read_legacy(path, chunk_size)


def write_imatrix(imatrix: Imatrix, path: str | Path) -> Path:
    """GGUF unless the name ends in ``.dat``."""
    path = Path(path)
    return write_legacy(imatrix, path) if path.suffix == ".dat" else write_gguf(imatrix, path)
