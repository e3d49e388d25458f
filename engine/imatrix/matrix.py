"""An importance matrix as llama.cpp keeps it: per weight tensor, Σx² per input channel and the
number of tokens summed, per expert for MoE weights (one row each)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ImatrixEntry:
    """sums: float32 [experts, channels] (1 row for a dense weight); counts: tokens per row."""

    sums: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        sums = np.atleast_2d(np.asarray(self.sums, dtype=np.float32))
        counts = np.asarray(self.counts, dtype=np.int64).reshape(-1)
        if sums.shape[0] != counts.shape[0]:
            raise ValueError(f"{sums.shape[0]} rows of sums but {counts.shape[0]} counts")
        object.__setattr__(self, "sums", sums)
        object.__setattr__(self, "counts", counts)

    @property
    def channels(self) -> int:
        return self.sums.shape[1]

    @property
    def experts(self) -> int:
        return self.sums.shape[0]

    def importance(self) -> np.ndarray:
        """Mean x² per channel and row, what llama-quantize weighs columns by (NaN where a row saw no
        token: an expert no calibration token was routed to)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts[:, None] > 0, self.sums / np.maximum(self.counts[:, None], 1), np.nan)

    def channel_importance(self) -> np.ndarray:
        """Mean x² per channel, over the experts that saw a token for an MoE weight."""
        importance = self.importance()
        if self.experts == 1:
            return importance[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a channel no expert saw stays NaN
            return np.nanmean(importance, axis=0)


@dataclass
class Imatrix:
    """entries by llama.cpp tensor name (``blk.0.attn_q.weight``), with the file's metadata.

    chunk_size 0: unknown (a legacy file, which stores means and a call count instead of sums and
    token counts; its counts here are calls x the chunk size it was read with)."""

    entries: dict[str, ImatrixEntry]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    origin: str = ""

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def tokens(self) -> int:
        """Tokens behind the matrix: the largest count (every dense weight sees every token)."""
        return int(max((int(e.counts.max()) for e in self.entries.values()), default=0))

    def names(self) -> list[str]:
        """Tensor names in block order, then by name (``blk.10`` after ``blk.9``)."""
        return sorted(self.entries, key=tensor_order)

    def unused_experts(self) -> dict[str, list[int]]:
        """Per MoE tensor, the experts that received no token."""
        return {name: np.flatnonzero(e.counts == 0).tolist() for name, e in self.entries.items()
                if e.experts > 1 and (e.counts == 0).any()}


def tensor_order(name: str) -> tuple:
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "blk" and parts[1].isdigit():
        return (0, int(parts[1]), ".".join(parts[2:]))
    return (1, 0, name)
