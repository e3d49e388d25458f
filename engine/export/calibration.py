"""Writers and readers for calibration artifacts: atomic, and never overwriting unless asked.

A calibration set is exported as a directory holding the samples in one of four formats and the
manifest::

    <target>/dataset/             (format "disk": datasets.save_to_disk)
    <target>/calibration.parquet  (format "parquet")
    <target>/calibration.jsonl    (format "jsonl")
    <target>/calibration.pt       (format "pt": torch.save of a list of dicts of [1, n] tensors)
    <target>/manifest.json

Each sample row has input_ids and attention_mask (unpadded: what a quantizer tokenizing for itself
would produce), the decoded text, and where it came from (row_id, source, token_offset, bucket).
llm-compressor and GPTQModel take the first three as they are. The ``pt`` file is the tokenized form
optimum's ``GPTQQuantizer(dataset=torch.load(...))`` takes as it is: its collate reads each sample's
shape as (batch, length), so 1-D ids are refused there; it holds only the ids and masks (the
provenance is in the manifest).
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path

import datasets
import torch

from engine.atomic import staged_directory
from engine.errors import ExportError, SpecError
from engine.sampling import CalibrationSet, Manifest
from engine.specs import choice


class ExportFormat(str, Enum):
    """How the samples are written: a ``datasets`` folder (``load_from_disk``), parquet, or jsonl."""

    DISK = "disk"
    PARQUET = "parquet"
    JSONL = "jsonl"
    PT = "pt"

    @property
    def filename(self) -> str:
        return {ExportFormat.DISK: "dataset", ExportFormat.PARQUET: "calibration.parquet",
                ExportFormat.JSONL: "calibration.jsonl", ExportFormat.PT: "calibration.pt"}[self]


MANIFEST = "manifest.json"


def export_format(value: ExportFormat | str) -> ExportFormat:
    try:
        return choice(ExportFormat, value, "export format")
    except SpecError as error:
        raise ExportError(str(error)) from None


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


def optimum_samples(dataset: datasets.Dataset) -> list[dict[str, torch.Tensor]]:
    """One {"input_ids", "attention_mask"} pair of [1, n] int64 tensors per sample (optimum's tokenized form)."""
    return [{"input_ids": torch.tensor([ids], dtype=torch.long), "attention_mask": torch.tensor([mask], dtype=torch.long)}
            for ids, mask in zip(dataset["input_ids"], dataset["attention_mask"])]


def _read_optimum_samples(path: str) -> datasets.Dataset:
    samples = torch.load(path, weights_only=True)
    return datasets.Dataset.from_dict({key: [s[key][0].tolist() for s in samples] for key in ("input_ids", "attention_mask")})


def _write_samples(dataset: datasets.Dataset, folder: Path, fmt: ExportFormat) -> None:
    path = str(folder / fmt.filename)
    writers = {
        ExportFormat.DISK: lambda: dataset.save_to_disk(path),
        ExportFormat.PARQUET: lambda: dataset.to_parquet(path),
        ExportFormat.JSONL: lambda: dataset.to_json(path, lines=True, force_ascii=False),
        ExportFormat.PT: lambda: torch.save(optimum_samples(dataset), path),
    }
    writers[fmt]()


def save_calibration_set(calibration: CalibrationSet, tokenizer, target: str | Path, fmt: ExportFormat | str = ExportFormat.DISK,
                         overwrite: bool = False) -> Path:
    """Write the set and its manifest to the directory ``target``; returns it.

    Raises ExportError if ``target`` exists and ``overwrite`` is False; with ``overwrite`` the old
    export is replaced only once the new one is complete.
    """
    fmt = export_format(fmt)
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
    readers = {
        ExportFormat.DISK: datasets.load_from_disk,
        ExportFormat.PARQUET: datasets.Dataset.from_parquet,
        ExportFormat.JSONL: datasets.Dataset.from_json,
        ExportFormat.PT: _read_optimum_samples,
    }
    for fmt, read in readers.items():
        if (folder / fmt.filename).exists():
            return read(str(folder / fmt.filename)), manifest
    raise ExportError(f"'{folder}' holds a manifest but no samples ({', '.join(f.filename for f in ExportFormat)}).")
