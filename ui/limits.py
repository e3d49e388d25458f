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

    @classmethod
    def shared_space(cls) -> Limits:
        return cls(shared=True, max_upload_bytes=20 * MIB, allow_local_paths=False, max_samples=256, max_sequence_length=2048)

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
