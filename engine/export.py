"""Writers and readers for calibration artifacts: atomic, and never overwriting unless asked.

A calibration set is exported as a directory holding the samples in one of three formats and the
manifest::

    <target>/dataset/             (format "disk": datasets.save_to_disk)
    <target>/calibration.parquet  (format "parquet")
    <target>/calibration.jsonl    (format "jsonl")
    <target>/manifest.json

Each sample row has input_ids and attention_mask (unpadded: what a quantizer tokenizing for itself
would produce), the decoded text, and where it came from (row_id, source, token_offset, bucket).
"""
from __future__ import annotations

from pathlib import Path

import datasets

from engine.atomic import staged_directory
from engine.errors import ExportError
from engine.sampling import CalibrationSet, Manifest

FORMATS = {"disk": "dataset", "parquet": "calibration.parquet", "jsonl": "calibration.jsonl"}
MANIFEST = "manifest.json"


def calibration_dataset(calibration: CalibrationSet, tokenizer) -> datasets.Dataset:
    """The set as a ``datasets.Dataset`` that llm-compressor and GPTQModel accept directly."""
    return datasets.Dataset.from_dict(
        {
            "input_ids": [s.tolist() for s in calibration.sequences],
            "attention_mask": [[1] * len(s) for s in calibration.sequences],
            "text": tokenizer.batch_decode(calibration.sequences, skip_special_tokens=True),
            "row_id": [p.row_id for p in calibration.provenance],
            "source": [p.source for p in calibration.provenance],
            "token_offset": [p.token_offset for p in calibration.provenance],
            "bucket": [p.bucket for p in calibration.provenance],
        }
    )


def _write_samples(dataset: datasets.Dataset, folder: Path, fmt: str) -> None:
    path = folder / FORMATS[fmt]
    if fmt == "disk":
        dataset.save_to_disk(str(path))
    elif fmt == "parquet":
        dataset.to_parquet(str(path))
    else:
        dataset.to_json(str(path), lines=True, force_ascii=False)


def save_calibration_set(calibration: CalibrationSet, tokenizer, target: str | Path, fmt: str = "disk",
                         overwrite: bool = False) -> Path:
    """Write the set and its manifest to the directory ``target``; returns it.

    Raises ExportError if ``target`` exists and ``overwrite`` is False; with ``overwrite`` the old
    export is replaced only once the new one is complete.
    """
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    target = Path(target).expanduser()
    if target.exists() and not overwrite:
        raise ExportError(f"'{target}' already exists. Choose another name, or allow overwriting it.")
    dataset = calibration_dataset(calibration, tokenizer)
    try:
        with staged_directory(target, replace_existing=overwrite) as staging:
            _write_samples(dataset, staging, fmt)
            (staging / MANIFEST).write_text(calibration.manifest.to_json(), encoding="utf-8")
    except OSError as error:
        raise ExportError(f"Could not write '{target}': {error.strerror or error}.") from error
    return target


def load_calibration_export(folder: str | Path) -> tuple[datasets.Dataset, Manifest]:
    """Read an export written by ``save_calibration_set`` (any format) and its manifest."""
    folder = Path(folder).expanduser()
    if not (folder / MANIFEST).is_file():
        raise ExportError(f"'{folder}' is not a calibscope export (no {MANIFEST}).")
    manifest = Manifest.from_json((folder / MANIFEST).read_text(encoding="utf-8"))
    if (folder / FORMATS["disk"]).is_dir():
        return datasets.load_from_disk(str(folder / FORMATS["disk"])), manifest
    if (folder / FORMATS["parquet"]).is_file():
        return datasets.Dataset.from_parquet(str(folder / FORMATS["parquet"])), manifest
    if (folder / FORMATS["jsonl"]).is_file():
        return datasets.Dataset.from_json(str(folder / FORMATS["jsonl"])), manifest
    raise ExportError(f"'{folder}' holds a manifest but no samples ({', '.join(FORMATS.values())}).")
