"""What the dashboard allows: everything locally, less on a shared Space with many visitors.

On a shared Space the caps and budgets come from the environment (``CALIBSCOPE_*``, see
``SPACE_SETTINGS``) and make the app's ``Guard``: the input policy (hub ids and the visitor's own
uploads only), the read limits of files, one memory budget for the whole process and one disk
quota for everything the app writes, shared by every visitor.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import CalibscopeError
from engine.guard import DiskQuota, Guard, MemoryBudget, ModelLimits, Policy, ReadLimits, return_freed_memory_promptly

MIB = 1024 * 1024
MB = MIB

# name: (what it sets, its default on a shared Space, the unit the value is given in)
SPACE_SETTINGS = {
    "CALIBSCOPE_MEMORY_MB": ("the memory the whole app may use", "85% of the machine's", "MB"),
    "CALIBSCOPE_DISK_MB": ("the disk quota of everything the app writes, across visitors", "16384", "MB"),
    "CALIBSCOPE_UPLOAD_MB": ("the largest upload", "20", "MiB"),
    "CALIBSCOPE_DECODED_MB": ("what one file may decode to", "128", "MiB"),
    "CALIBSCOPE_DOWNLOADS_MB": ("the downloads one visitor may have prepared at once", "1024", "MB"),
    "CALIBSCOPE_MODEL_DOWNLOAD_MB": ("the files of one hub model", "4096", "MB"),
    "CALIBSCOPE_HUB_CACHE_MB": ("the hub cache, trimmed to this after each download", "8192", "MB"),
    "CALIBSCOPE_MAX_PARAMETERS": ("the largest hub model, in parameters", "1500000000", "parameters"),
    "CALIBSCOPE_MAX_BATCH": ("the largest batch of a pass", "32", "samples"),
    "CALIBSCOPE_SPACE_DIR": ("where visitors' files are written", "<temp>/calibscope-space", "a folder"),
}


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise CalibscopeError(f"{name}={raw!r} is not a number; set it to {SPACE_SETTINGS[name][0]} in "
                              f"{SPACE_SETTINGS[name][2]}, or unset it for the default.") from None
    if value <= 0:
        raise CalibscopeError(f"{name}={raw!r} must be positive.")
    return value


def _bytes(megabytes: float | None) -> int | None:
    return None if megabytes is None else int(megabytes * MB)


def machine_memory_bytes() -> int:
    """The memory this process may use: its cgroup's limit where one is set (a Space's container),
    else the machine's."""
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = limit.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def upload_folder() -> Path:
    """Where Gradio writes visitors' uploads (and copies of what it serves)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def written_folders(work: Path) -> list[Path]:
    """Every folder the app writes to, for the disk quota."""
    from engine.models import cache_root

    home = Path.home() / ".cache" / "huggingface"
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", home)) / "hub")
    datasets = Path(os.environ.get("HF_DATASETS_CACHE") or Path(os.environ.get("HF_HOME", home)) / "datasets")
    return [work, upload_folder(), hub, datasets, cache_root()]


@dataclass(frozen=True)
class Limits:
    """Caps applied before any work starts, so a visitor gets a message instead of a stalled Space."""

    shared: bool = False
    max_upload_bytes: int = 200 * MIB
    allow_local_paths: bool = True
    max_samples: int = 100_000
    max_sequence_length: int = 1 << 20
    max_parameters: int | None = None
    max_hessian_mb: float | None = None
    max_compare_runs: int | None = None
    max_download_mb: float | None = None
    max_batch_size: int | None = None
    memory_mb: float | None = None  # the whole process's budget (None: only what is free is planned with)
    disk_mb: float | None = None  # everything the app writes, across visitors (None: no quota)
    decoded_mb: float = 1024.0
    max_records: int = 5_000_000
    model_download_mb: float | None = None
    hub_cache_mb: float | None = None
    work_dir: Path | None = None  # where visitors' downloads are written (None: the system's temporary folder)
    reading: ReadLimits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "reading", ReadLimits(file_bytes=self.max_upload_bytes, decoded_bytes=int(self.decoded_mb * MIB),
                                                       records=self.max_records))

    @classmethod
    def shared_space(cls) -> Limits:
        """The shared-Space caps, each overridable by its ``CALIBSCOPE_*`` variable (SPACE_SETTINGS)."""
        machine = machine_memory_bytes() * 0.85 / MB
        work = Path(os.environ.get("CALIBSCOPE_SPACE_DIR") or Path(tempfile.gettempdir()) / "calibscope-space")
        return cls(shared=True, max_upload_bytes=int(_number("CALIBSCOPE_UPLOAD_MB", 20) * MIB), allow_local_paths=False,
                   max_samples=256, max_sequence_length=2048,
                   max_parameters=int(_number("CALIBSCOPE_MAX_PARAMETERS", 1_500_000_000)), max_hessian_mb=1024.0,
                   max_compare_runs=12, max_download_mb=_number("CALIBSCOPE_DOWNLOADS_MB", 1024.0),
                   max_batch_size=int(_number("CALIBSCOPE_MAX_BATCH", 32)), memory_mb=_number("CALIBSCOPE_MEMORY_MB", machine),
                   disk_mb=_number("CALIBSCOPE_DISK_MB", 16384.0), decoded_mb=_number("CALIBSCOPE_DECODED_MB", 128.0),
                   max_records=200_000, model_download_mb=_number("CALIBSCOPE_MODEL_DOWNLOAD_MB", 4096.0),
                   hub_cache_mb=_number("CALIBSCOPE_HUB_CACHE_MB", 8192.0), work_dir=work)

    @classmethod
    def from_environment(cls, shared: bool | None = None) -> Limits:
        if shared is None:
            shared = os.environ.get("CALIBSCOPE_SHARED", "") == "1"
        return cls.shared_space() if shared else cls()

    def guard(self) -> Guard:
        """The app's guard: its policy, read limits, and (shared) its memory budget and disk quota."""
        policy = Policy(local_paths=self.allow_local_paths, upload_roots=() if self.allow_local_paths else (upload_folder(),))
        work = None
        if self.work_dir is not None:
            work = Path(self.work_dir)
            work.mkdir(parents=True, exist_ok=True)
        if self.memory_mb is not None:  # resident memory must measure what is used, for the budget to mean anything
            return_freed_memory_promptly()
        memory = MemoryBudget(int(self.memory_mb * MB)) if self.memory_mb is not None else None
        disk = DiskQuota(int(self.disk_mb * MB), written_folders(work or Path(tempfile.gettempdir()) / "calibscope-space")) \
            if self.disk_mb is not None else None
        models = ModelLimits(self.max_parameters, _bytes(self.model_download_mb), _bytes(self.hub_cache_mb))
        return Guard(policy=policy, reading=self.reading, memory=memory, disk=disk, models=models, work_dir=work,
                     max_batch_size=self.max_batch_size)

    def check_sampling(self, nsamples: int, length: int) -> None:
        where = " on this shared Space" if self.shared else ""
        if nsamples > self.max_samples:
            raise CalibscopeError(f"{nsamples:,} samples is more than the {self.max_samples:,} allowed{where}; ask for fewer.")
        if length > self.max_sequence_length:
            raise CalibscopeError(
                f"A sequence length of {length:,} tokens is more than the {self.max_sequence_length:,} allowed{where}."
            )

    def check_batch(self, batch_size: int) -> None:
        if self.max_batch_size is not None and batch_size > self.max_batch_size:
            raise CalibscopeError(f"A batch of {batch_size:,} samples is more than the {self.max_batch_size:,} allowed on this "
                                  "shared Space; use a smaller batch (the results do not depend on it).")

    def check_hessian_memory(self, megabytes: float) -> None:
        if self.max_hessian_mb is not None and megabytes > self.max_hessian_mb:
            raise CalibscopeError(
                f"These Hessians would take {megabytes:,.0f} MB, more than the {self.max_hessian_mb:,.0f} MB a session may "
                "hold on this shared Space. Select fewer layers with the name filter (e.g. 'layers\\.(0|1)\\.'), "
                "or run calibscope locally."
            )

    def check_downloads(self, held_mb: float, adding_mb: float, what: str) -> None:
        if self.max_download_mb is not None and held_mb + adding_mb > self.max_download_mb:
            raise CalibscopeError(
                f"{what} would take about {adding_mb:,.0f} MB; this shared Space keeps at most {self.max_download_mb:,.0f} MB "
                f"of downloads per visitor ({held_mb:,.0f} MB held). Leave it out, or run calibscope locally."
            )

    def check_runs(self, runs: int) -> None:
        if self.max_compare_runs is not None and runs > self.max_compare_runs:
            raise CalibscopeError(
                f"This comparison builds and quantizes {runs} sets; this shared Space runs at most {self.max_compare_runs} "
                "per request. Use fewer strategies, seeds or counts, or run bench/selection.py locally."
            )
