"""What every strategy reads: the documents as text, their token counts, the inference prefix."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from engine.sampling.calibration_set import Provenance


@dataclass(frozen=True)
class SamplingContext:
    dataset: object  # datasets.Dataset with text, source, row_id
    tokenizer: object
    texts: list[str]
    sources: list[str]
    prefix: list[int]
    lengths: np.ndarray  # tokens per document, without the prefix
    eos_id: int | None
    model: object = None  # the LoadedModel, for strategies that run it (activation clusters, self-generated)

    def with_prefix(self, tokens: np.ndarray) -> np.ndarray:
        """A sequence as the model sees it at inference: prefix (e.g. BOS) + tokens."""
        return np.concatenate([np.asarray(self.prefix, dtype=np.int64), tokens]) if self.prefix else tokens

    def row(self, document: int, offset: int, bucket: str = "", truncated: bool = False) -> Provenance:
        return Provenance(
            row_id=int(document), source=self.sources[document], token_offset=int(offset),
            document_tokens=int(self.lengths[document]), bucket=bucket, truncated=truncated,
        )


@dataclass
class Draft:
    """What a strategy returns; ``engine.sampling.build`` adds the manifest."""

    sequences: list[np.ndarray]
    provenance: list[Provenance]
    notes: list[str] = field(default_factory=list)
    buckets: pd.DataFrame | None = None
    selection: pd.DataFrame | None = None  # cluster strategies: every candidate's projection, cluster, selected


def locate_token(document_chars: np.ndarray, token_chars: np.ndarray | None, start: int) -> tuple[int, int]:
    """(document, token offset inside it) of a token position in a joined corpus."""
    if token_chars is None:  # a slow tokenizer gives no character offsets
        return 0, start
    document = int(np.searchsorted(document_chars, token_chars[start], side="right") - 1)
    first_token = int(np.searchsorted(token_chars, document_chars[document], side="left"))
    return document, start - first_token
