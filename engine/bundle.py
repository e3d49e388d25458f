"""A tensor bundle on disk: a folder with one safetensors file and one JSON file, written atomically."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.atomic import staged_directory
from engine.errors import CalibscopeError, ExportError


def write_bundle(folder: str | Path, tensors: dict[str, torch.Tensor], payload: dict, names: tuple[str, str],
                 overwrite: bool = False) -> Path:
    """Write ``tensors`` to names[0] and ``payload`` to names[1] inside ``folder``; refuse an existing
    folder unless ``overwrite`` (then the old one is replaced only once the new one is whole)."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ExportError(f"'{folder}' already exists. Choose another name, or allow overwriting it.")
    with staged_directory(folder, replace_existing=overwrite) as staging:
        save_file({name: t.contiguous().cpu() for name, t in tensors.items()}, str(staging / names[0]))
        (staging / names[1]).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return folder


def read_bundle(folder: str | Path, names: tuple[str, str], what: str) -> tuple[dict[str, torch.Tensor], dict]:
    folder = Path(folder)
    if not all((folder / name).is_file() for name in names):
        raise CalibscopeError(f"'{folder}' holds no saved {what} ({' and '.join(names)}).")
    return load_file(str(folder / names[0])), json.loads((folder / names[1]).read_text(encoding="utf-8"))
