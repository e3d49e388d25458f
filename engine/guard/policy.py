"""What a visitor may name. Locally everything stays allowed; on a shared Space a visitor names hub
ids only (never a path, a URL scheme or a ``..``), and the only files read are their own uploads.

Every loader asks the guard in force (``engine.guard.current()``) before it reads, so a field the
dashboard forgets to check still cannot reach a file of the server.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import Refused

# A hub repository id: ``name`` or ``org/name``, each part letters, digits, '.', '_' or '-' (the
# hub's own rule), at most 96 characters.
HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"{HUB_PART}(?:/{HUB_PART})?")
PACKAGED_PREFIX = "builtin:"
# A config name, split, revision or column: what the hub and datasets take, nothing that means a path.
HUB_WORD = re.compile(r"[A-Za-z0-9_.:%+\[\]=-]{1,128}")
# Names ``datasets.load_dataset`` resolves to a builder that reads local files, not to a hub dataset.
FILE_BUILDERS = frozenset({"arrow", "audiofolder", "csv", "imagefolder", "json", "pandas", "parquet", "text", "videofolder",
                           "webdataset", "xml", "sql", "spark", "generator", "cache", "hdf5", "pdffolder", "lance",
                           "iceberg", "vortex", "eval", "harbor", "tsfile", "meshfolder", "niftifolder", "conll", "fasta",
                           "fastq", "genbank", "mmcif", "pdb"})


def _shown(value: object) -> str:
    text = str(value)
    return repr(text if len(text) <= 80 else text[:77] + "...")


@dataclass(frozen=True)
class Policy:
    """``local_paths``: names may be paths of this machine (the local app and the CLI). Without it
    (a shared Space) names are hub ids and files are read only from ``upload_roots``, the folder the
    upload widget writes visitors' files to."""

    local_paths: bool = True
    upload_roots: tuple[Path, ...] = ()

    @property
    def shared(self) -> bool:
        return not self.local_paths

    def _hub_id(self, name: str, what: str, example: str) -> str:
        name = (name or "").strip()
        if not name:
            raise Refused(f"The {what} is empty: give a Hugging Face id such as {example}.")
        looks_local = (".." in name or "://" in name or name.startswith(("/", "~", ".", "\\")) or "\\" in name
                       or os.path.lexists(name))
        if looks_local or not HUB_ID.fullmatch(name):
            raise Refused(f"{_shown(name)} is not a Hugging Face id: this shared Space reads nothing of its own disk, so "
                          f"the {what} must be a hub id (letters, digits, '.', '_', '-', at most one '/'), such as {example}.")
        return name

    def model_name(self, name: str) -> str:
        """A model name as the loaders take it (a builtin, tiny or hub model; locally also a folder)."""
        if self.local_paths or (name or "").strip().startswith(PACKAGED_PREFIX):
            return (name or "").strip()
        return self._hub_id(name, "model", "'HuggingFaceTB/SmolLM2-135M', or a builtin model")

    def dataset_name(self, name: str) -> str:
        """A hub dataset id (or one of calibscope's recipe names): never a folder or a file builder."""
        if self.local_paths:
            return (name or "").strip()
        name = self._hub_id(name, "hub dataset", "'wikitext2' or 'allenai/c4'")
        if name.lower() in FILE_BUILDERS:
            raise Refused(f"{_shown(name)} is the datasets library's reader of local files, which this shared Space does "
                          "not offer: give a hub dataset id (org/name), or upload the file.")
        return name

    def hub_word(self, value: str | None, what: str) -> str | None:
        """A config name, split or revision passed to the hub (None and '' stay as they are)."""
        if value is None or value == "" or self.local_paths:
            return value
        if not HUB_WORD.fullmatch(value) or ".." in value or "/" in value:
            raise Refused(f"The {what} {_shown(value)} holds characters this shared Space does not pass on (letters, "
                          "digits and . _ - : % + [ ] = only).")
        return value

    def upload(self, path: str | os.PathLike, what: str) -> Path:
        """A file a visitor uploaded: on a shared Space it must be a regular file inside the upload
        folder (links resolved first), never another file of the server."""
        given = Path(os.fspath(path))
        if self.local_paths:
            return given.expanduser()
        try:
            real = given.resolve(strict=True)
        except (OSError, RuntimeError):
            raise Refused(f"The {what} {_shown(given.name)} is not an upload of this session: upload the file again.") from None
        roots = [Path(root).resolve() for root in self.upload_roots]
        if not any(root in real.parents for root in roots) or not real.is_file():
            raise Refused(f"The {what} must be a file you uploaded here; this shared Space reads no other file "
                          f"({_shown(given.name)} is not one).")
        return real

    def local_folder(self, path: str | os.PathLike, what: str) -> Path:
        """A folder of this machine to read or write (a checkpoint folder, a model folder): refused
        on a shared Space, whose visitors download what they make."""
        if not self.local_paths:
            raise Refused(f"This shared Space does not write to its own disk for visitors, nor read its folders ({what}): "
                          "leave the field empty and use the upload and download buttons.")
        return Path(os.fspath(path)).expanduser()
