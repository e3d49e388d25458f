"""One folder of downloads per visitor: each artifact written once per state of the session,
replaced (the old file removed) when what it holds changes, and the folder removed with the session.
A second click on an unchanged session writes nothing.

The folder lives in the guard's working folder (counted by the disk quota), and every write first
reserves its estimated size in the quota, twice over: Gradio serves a copy of each file from its own
cache. A write that fails or is cancelled leaves nothing: its staging folder is removed.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable, Hashable
from pathlib import Path

from engine import guard

MB = 2**20
SERVED_COPIES = 2  # the file here and Gradio's copy of it


class ExportFolder:
    def __init__(self) -> None:
        self.folder: Path | None = None
        self._made: dict[str, tuple[Hashable, Path]] = {}  # artifact -> (identity of what it holds, file)

    def file(self, artifact: str, identity: Hashable, write: Callable[[Path], Path], estimate: int = 0) -> tuple[Path, bool]:
        """The artifact's file for this identity, and whether it was written now: ``write(folder)``
        runs only when the artifact is new or holds something else than last time, after its
        ``estimate`` (bytes) was reserved in the disk quota."""
        made = self._made.get(artifact)
        if made is not None and made[0] == identity and made[1].exists():
            return made[1], False
        current = guard.current()
        with current.reserve_disk(f"The {artifact}", SERVED_COPIES * estimate):
            if self.folder is None:
                root = current.work_dir / "downloads" if current.work_dir is not None else None
                if root is not None:
                    root.mkdir(parents=True, exist_ok=True)
                self.folder = Path(tempfile.mkdtemp(prefix="calibscope-downloads-", dir=root))
            if made is not None:
                remove(made[1])
                del self._made[artifact]
            staging = Path(tempfile.mkdtemp(prefix=f"{artifact}-", dir=self.folder))  # a fresh name: never overwrite
            try:
                path = write(staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)  # a failed or cancelled write leaves nothing
                raise
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
    """``folder`` as ``folder.zip`` (its name at the archive's root), the folder removed afterwards
    (and a partial archive, if writing it fails). safetensors hold floats that do not compress:
    those archives are stored, which is much faster."""
    archive = folder.with_suffix(".zip")
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    try:
        with zipfile.ZipFile(archive, "w", method) as out:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    out.write(path, path.relative_to(folder.parent))
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return archive
