"""Pre-tokenized input: a CalibrationSet from token windows made elsewhere, with provenance
"supplied" and a manifest like any other set (the token hash names exactly what was given).

Windows come as lists of ids, a 2-D tensor or array, a ``datasets.Dataset`` with ``input_ids``
(and ``attention_mask``: padding is dropped, left or right), or a file holding one of those:
``.parquet`` / ``.jsonl`` / ``.json`` (an ``input_ids`` column), ``.pt`` (a tensor or a list),
``.npy``, or a ``datasets`` folder (``save_to_disk``, calibscope's disk export included).
"""
from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from engine import guard
from engine.corpus import json_records, read_parquet
from engine.errors import OverBudget, SamplingError
from engine.sampling import manifest as manifests
from engine.sampling.calibration_set import CalibrationSet, Provenance
from engine.sampling.context import Draft, SamplingContext
from engine.sampling.manifest import Manifest
from engine.sampling.specs import SuppliedSpec
from engine.sampling.tokens import inference_prefix, pad_id

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json")


def not_built(context: SamplingContext, spec: SuppliedSpec, rng: np.random.Generator) -> Draft:
    """The registry's builder: a supplied set is loaded, never drawn from a corpus."""
    raise SamplingError("A supplied set is loaded from its token windows, not built from a corpus: "
                        f"load {spec.path or 'the same windows'} again (engine.sampling.supplied.supplied_set).")


def _unpadded(ids, mask) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    return ids if mask is None else ids[np.asarray(mask).reshape(-1).astype(bool)]


def _from_table(table) -> list[np.ndarray]:
    if "input_ids" not in table.column_names:
        raise SamplingError(f"No 'input_ids' column among {table.column_names}: pre-tokenized windows need one.")
    masks = table["attention_mask"] if "attention_mask" in table.column_names else [None] * len(table)
    return [_unpadded(ids, mask) for ids, mask in zip(table["input_ids"], masks)]


def windows_of(given) -> list[np.ndarray]:
    """Token windows from any of the supported forms (see the module docstring)."""
    import datasets

    if isinstance(given, (str, Path)):
        return read_windows(given)
    if isinstance(given, datasets.Dataset):
        return _from_table(given)
    if isinstance(given, (torch.Tensor, np.ndarray)):
        array = given.detach().cpu().numpy() if isinstance(given, torch.Tensor) else given
        if array.ndim != 2:
            raise SamplingError(f"A tensor of windows must be 2-D [windows, tokens]; this one has shape {tuple(array.shape)}.")
        return [np.asarray(row, dtype=np.int64) for row in array]
    if isinstance(given, dict) and "input_ids" in given:
        return _from_table(datasets.Dataset.from_dict({k: list(v) for k, v in given.items()}))
    return [_unpadded(window, None) for window in given]


def _ids_columns(columns: list[str], textual: list[str]) -> list[str]:
    if "input_ids" not in columns:
        raise SamplingError(f"No 'input_ids' column among {columns}: pre-tokenized windows need one.")
    return ["input_ids", *(["attention_mask"] if "attention_mask" in columns else [])]


def _parquet_windows(path: Path) -> list[np.ndarray]:
    limits = guard.current().reading
    table = read_parquet(path, _ids_columns, limits.counter(path.name), limits, SamplingError)
    masks = table.values.get("attention_mask", [None] * len(table.values["input_ids"]))
    return [_unpadded([] if ids is None else ids, mask) for ids, mask in zip(table.values["input_ids"], masks)]


def _json_windows(path: Path) -> list[np.ndarray]:
    text = path.read_bytes().decode("utf-8", errors="strict")
    rows = {"input_ids": [], "attention_mask": []}
    for record, where in json_records(path, text, guard.current().reading.counter(path.name), SamplingError):
        if not isinstance(record, dict) or "input_ids" not in record:
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise SamplingError(f"No 'input_ids' column among {found} ({where}): pre-tokenized windows need one.")
        rows["input_ids"].append(record["input_ids"])
        rows["attention_mask"].append(record.get("attention_mask"))
    return [_unpadded(ids, mask) for ids, mask in zip(rows["input_ids"], rows["attention_mask"])]


def _torch_windows(path: Path) -> list[np.ndarray]:
    """A torch.save file: a zip whose entries must be stored (torch never compresses them), so what
    it decodes to is what its entries say, checked before anything is unpickled."""
    limits = guard.current().reading
    with zipfile.ZipFile(path) as archive:
        entries = archive.infolist()
        if any(entry.compress_type != zipfile.ZIP_STORED for entry in entries):
            raise SamplingError(f"'{path.name}' holds compressed entries, which torch.save never writes: save the windows "
                                "with torch.save (or as .npy / .parquet).")
        limits.counter(path.name).expect(sum(entry.file_size for entry in entries), 0)
    try:
        given = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch's loader fails on a damaged file in many ways; all mean "not readable"
        raise SamplingError(f"'{path.name}' is not a torch.save file of token windows ({type(error).__name__}).") from None
    return windows_of(given)


def _numpy_windows(path: Path) -> list[np.ndarray]:
    """A .npy file: its header's shape and dtype must describe exactly the bytes that follow."""
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise SamplingError(f"'{path.name}' is a .npy file of version {version}; save it with numpy.save (version 1.0).")
        try:
            shape, _, dtype = read_header(handle, max_header_size=10_000)
        except Exception as error:  # noqa: BLE001 - numpy parses the header as a Python literal: any failure means "not .npy"
            raise SamplingError(f"'{path.name}' has no readable .npy header ({type(error).__name__}).") from None
        data_bytes = path.stat().st_size - handle.tell()
    count = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if dtype.hasobject or count * dtype.itemsize != data_bytes:
        raise SamplingError(f"'{path.name}' says it holds {shape} of {dtype}, which is not what follows its header "
                            f"({data_bytes:,} bytes).")
    return windows_of(np.load(path, allow_pickle=False))


_READERS = {".parquet": _parquet_windows, ".jsonl": _json_windows, ".json": _json_windows, ".pt": _torch_windows,
            ".npy": _numpy_windows}


def read_windows(path: str | Path) -> list[np.ndarray]:
    """Windows from a file (or, locally, a datasets folder), through the guard: on a shared Space
    only the visitor's own upload, its size and what it decodes to within the read limits."""
    import datasets

    path = guard.current().policy.upload(path, "token windows file")
    if not path.exists():
        raise SamplingError(f"No token windows at '{path}'.")
    reader = _READERS.get(path.suffix.lower())
    if reader is None and not path.is_dir():
        raise SamplingError(f"'{path.name}': token windows are read from {', '.join(TABLE_SUFFIXES)}, .pt, .npy or a "
                            "datasets folder.")
    try:
        if path.is_dir():
            return _from_table(datasets.load_from_disk(str(path / "dataset" if (path / "dataset").is_dir() else path)))
        guard.current().reading.check_file(path, "file of token windows", error=SamplingError)
        return reader(path)
    except (SamplingError, OverBudget):
        raise
    except (ValueError, OSError, json.JSONDecodeError, RuntimeError, zipfile.BadZipFile, UnicodeDecodeError, EOFError,
            KeyError, TypeError, AttributeError, IndexError, OverflowError, MemoryError) as error:
        raise SamplingError(f"'{path.name}' could not be read as token windows ({str(error)[:200]}).") from None


def _check(windows: list[np.ndarray], tokenizer, max_positions: int | None) -> None:
    if not windows:
        raise SamplingError("No token windows were given.")
    vocabulary = len(tokenizer)
    for number, window in enumerate(windows):
        if len(window) == 0:
            raise SamplingError(f"Window {number} is empty.")
        if window.min() < 0 or window.max() >= vocabulary:
            bad = int(window[(window < 0) | (window >= vocabulary)][0])
            raise SamplingError(f"Window {number} holds token id {bad}, outside this tokenizer's {vocabulary:,} ids: "
                                "were the windows made with another tokenizer?")
        if max_positions is not None and len(window) > max_positions:
            raise SamplingError(f"Window {number} has {len(window):,} tokens, more than the model's {max_positions:,} positions.")


def supplied_set(given, tokenizer, source: str = "", max_positions: int | None = None,
                 limit: int | None = None) -> CalibrationSet:
    """A CalibrationSet of the windows ``given`` (the first ``limit`` of them), checked against the
    tokenizer's vocabulary and the model's positions."""
    windows = windows_of(given)[:limit]
    _check(windows, tokenizer, max_positions)
    source = source or (Path(given).name if isinstance(given, (str, Path)) else "supplied windows")
    spec = SuppliedSpec(nsamples=len(windows), length=max(len(w) for w in windows),
                        path=str(given) if isinstance(given, (str, Path)) else "")
    token_sha256 = manifests.token_hash(windows)
    prefix = inference_prefix(tokenizer)
    starting = sum(1 for w in windows if prefix and list(w[:len(prefix)]) == prefix)
    notes = [(f"{len(windows):,} token windows supplied from {source}, used as given; {starting:,} of them start with "
              f"{tokenizer.decode(prefix) if prefix else 'no start token'}.")]
    provenance = [Provenance(row_id=i, source=source, token_offset=0, document_tokens=len(w)) for i, w in enumerate(windows)]
    manifest = Manifest(
        strategy=spec.strategy.value, params=json.loads(json.dumps(dataclasses.asdict(spec))), seed=0,
        corpus={"label": source, "documents": len(windows), "sha256": token_sha256, "provenance": "supplied"},
        tokenizer=manifests.tokenizer_identity(tokenizer, prefix if starting == len(windows) else []),
        rows=[{"row_id": i, "offset": 0, "tokens": len(w)} for i, w in enumerate(windows)],
        token_sha256=token_sha256, samples=len(windows), tokens=int(sum(len(w) for w in windows)), notes=notes)
    return CalibrationSet(sequences=windows, provenance=provenance, spec=spec, asked=len(windows), pad_token_id=pad_id(tokenizer),
                          padding_side=tokenizer.padding_side, manifest=manifest, notes=notes,
                          corpus_lengths=np.array([len(w) for w in windows], dtype=np.int64))
