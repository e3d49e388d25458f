"""What the dashboard allows: everything locally, less on a shared Space with many visitors."""
from __future__ import annotations

import os
from dataclasses import dataclass

from engine.errors import CalibscopeError

MIB = 1024 * 1024


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

    @classmethod
    def shared_space(cls) -> Limits:
        return cls(shared=True, max_upload_bytes=20 * MIB, allow_local_paths=False, max_samples=256, max_sequence_length=2048,
                   max_parameters=1_500_000_000, max_hessian_mb=1024.0, max_compare_runs=12, max_download_mb=512.0)

    @classmethod
    def from_environment(cls, shared: bool | None = None) -> Limits:
        if shared is None:
            shared = os.environ.get("CALIBSCOPE_SHARED", "") == "1"
        return cls.shared_space() if shared else cls()

    def check_sampling(self, nsamples: int, length: int) -> None:
        where = " on this shared Space" if self.shared else ""
        if nsamples > self.max_samples:
            raise CalibscopeError(f"{nsamples:,} samples is more than the {self.max_samples:,} allowed{where}; ask for fewer.")
        if length > self.max_sequence_length:
            raise CalibscopeError(
                f"A sequence length of {length:,} tokens is more than the {self.max_sequence_length:,} allowed{where}."
            )

    def check_model_name(self, name: str) -> None:
        if self.allow_local_paths:
            return
        if name.startswith(("/", ".", "~")) or os.path.isdir(os.path.expanduser(name)):
            raise CalibscopeError(
                "Local model folders are disabled on this shared Space. Use a builtin model or a "
                "Hugging Face model id (org/name)."
            )

    def check_model_size(self, name: str, estimate=None) -> None:
        """Refuse a hub model larger than ``max_parameters`` before downloading its weights
        (``estimate(name)`` reads only its config; builtin and tiny models are known to be small)."""
        from engine.models.size import estimate_parameters, is_packaged

        if self.max_parameters is None or is_packaged(name):
            return
        parameters = (estimate or estimate_parameters)(name)
        if parameters > self.max_parameters:
            raise CalibscopeError(
                f"'{name}' has {parameters / 1e9:,.2f} B parameters; this shared Space takes models up to "
                f"{self.max_parameters / 1e9:,.1f} B. Run calibscope locally (pip install calibscope) for larger models."
            )

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
