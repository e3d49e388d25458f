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
from pathlib import Path

import numpy as np
import torch

from engine.errors import SamplingError
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


def read_windows(path: str | Path) -> list[np.ndarray]:
    import datasets

    path = Path(path).expanduser()
    if not path.exists():
        raise SamplingError(f"No token windows at '{path}'.")
    try:
        if path.is_dir():
            return _from_table(datasets.load_from_disk(str(path / "dataset" if (path / "dataset").is_dir() else path)))
        if path.suffix == ".parquet":
            return _from_table(datasets.Dataset.from_parquet(str(path)))
        if path.suffix in (".jsonl", ".json"):
            return _from_table(datasets.Dataset.from_json(str(path)))
        if path.suffix == ".pt":
            return windows_of(torch.load(path, map_location="cpu", weights_only=True))
        if path.suffix == ".npy":
            return windows_of(np.load(path, allow_pickle=False))
    except (ValueError, OSError, json.JSONDecodeError, RuntimeError) as error:
        raise SamplingError(f"'{path.name}' could not be read as token windows ({error}).") from None
    raise SamplingError(f"'{path.name}': token windows are read from {', '.join(TABLE_SUFFIXES)}, .pt, .npy or a "
                        "datasets folder.")


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


def supplied_set(given, tokenizer, source: str = "", max_positions: int | None = None, limit: int | None = None) -> CalibrationSet:
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
    notes = [f"{len(windows):,} token windows supplied from {source}, used as given; {starting:,} of them start with "
             f"{tokenizer.decode(prefix) if prefix else 'no start token'}."]
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
