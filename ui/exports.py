"""One folder of downloads per visitor: each artifact written once per state of the session,
replaced (the old file removed) when what it holds changes, and the folder removed with the session.
A second click on an unchanged session writes nothing."""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Hashable
from pathlib import Path

MB = 2**20


class ExportFolder:
    def __init__(self) -> None:
        self.folder: Path | None = None
        self._made: dict[str, tuple[Hashable, Path]] = {}  # artifact -> (identity of what it holds, file)

    def file(self, artifact: str, identity: Hashable, write: Callable[[Path], Path]) -> tuple[Path, bool]:
        """The artifact's file for this identity, and whether it was written now: ``write(folder)``
        runs only when the artifact is new or holds something else than last time."""
        made = self._made.get(artifact)
        if made is not None and made[0] == identity and made[1].exists():
            return made[1], False
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="calibscope-downloads-"))
        if made is not None:
            remove(made[1])
        staging = Path(tempfile.mkdtemp(prefix=f"{artifact}-", dir=self.folder))  # a fresh name: never overwrite
        path = write(staging)
        self._made[artifact] = (identity, path)
        return path, True

    def megabytes(self) -> float:
        return sum(p.stat().st_size for _, p in self._made.values() if p.exists()) / MB

    def close(self) -> None:
        """Remove every file (the session ended)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder, self._made = None, {}

    def __deepcopy__(self, memo) -> ExportFolder:
        return ExportFolder()  # a new visitor's session starts with its own, empty folder


def remove(path: Path) -> None:
    """A superseded artifact and the staging folder it was written in."""
    shutil.rmtree(path.parent, ignore_errors=True)


def zipped(folder: Path, compress: bool = True) -> Path:
    """``folder`` as ``folder.zip`` (its name at the archive's root), the folder removed afterwards.
    safetensors hold floats that do not compress: those archives are stored, which is much faster."""
    archive = folder.with_suffix(".zip")
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(archive, "w", method) as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                out.write(path, path.relative_to(folder.parent))
    shutil.rmtree(folder)
    return archive
