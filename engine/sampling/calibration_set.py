"""CalibrationSet: token sequences with their provenance, padded into batches on demand."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from engine.sampling.manifest import Manifest, token_hash
from engine.sampling.specs import SamplingSpec


@dataclass(frozen=True)
class Provenance:
    """Where one calibration sequence came from.

    row_id and source name the corpus document (for a joined-corpus window or a packed block: the
    document its first token comes from); token_offset is where the sequence starts in that
    document's tokens; document_tokens is the document's length before truncation or windowing;
    bucket is the length bucket (length-stratified only); truncated says tokens were cut off.
    """

    row_id: int
    source: str
    token_offset: int
    document_tokens: int
    bucket: str = ""
    truncated: bool = False


@dataclass
class CalibrationSet:
    """The calibration sequences (BOS included where the model expects it) and how they were made.

    ``notes`` holds what the user must know (fewer samples than asked, a clamped length, ...);
    ``buckets`` the per-bucket table of length-stratified sets; ``corpus_lengths`` the token count of
    every corpus document, for the length histogram; ``selection`` the candidates of cluster strategies
    (2-D projection, cluster, selected).
    """

    sequences: list[np.ndarray]
    provenance: list[Provenance]
    spec: SamplingSpec
    asked: int
    pad_token_id: int
    padding_side: str
    manifest: Manifest
    notes: list[str] = field(default_factory=list)
    buckets: pd.DataFrame | None = None
    corpus_lengths: np.ndarray | None = None
    selection: pd.DataFrame | None = None

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(s) for s in self.sequences], dtype=np.int64)

    def subset(self, rows: list[int]) -> CalibrationSet:
        """The sequences at ``rows`` (in that order) as a set of their own: sample-count sweeps and
        comparisons at several sizes. The manifest keeps the recipe and lists only these rows."""
        sequences = [self.sequences[i] for i in rows]
        manifest = dataclasses.replace(self.manifest, rows=[self.manifest.rows[i] for i in rows],
                                       token_sha256=token_hash(sequences), samples=len(rows),
                                       tokens=int(sum(len(s) for s in sequences)))
        return dataclasses.replace(self, sequences=sequences, provenance=[self.provenance[i] for i in rows],
                                   manifest=manifest, buckets=None, selection=None,
                                   notes=[*self.notes, f"{len(rows)} of the {len(self)} samples of this set."])

    def pad(self, indices: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of the chosen sequences, padded on the tokenizer's side."""
        chosen = [self.sequences[i] for i in (range(len(self)) if indices is None else indices)]
        width = max((len(s) for s in chosen), default=0)
        ids = torch.full((len(chosen), width), self.pad_token_id, dtype=torch.long, device="cpu")
        mask = torch.zeros((len(chosen), width), dtype=torch.long, device="cpu")
        for row, sequence in enumerate(chosen):
            span = slice(width - len(sequence), width) if self.padding_side == "left" else slice(0, len(sequence))
            ids[row, span] = torch.from_numpy(sequence)
            mask[row, span] = 1
        return ids, mask

    @property
    def input_ids(self) -> torch.Tensor:
        return self.pad()[0]

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.pad()[1]

    def batch_indices(self, batch_size: int, by_length: bool = False) -> list[list[int]]:
        """Row indices per batch; ``by_length`` groups similar lengths to waste less padding."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        order = np.argsort(self.lengths, kind="stable").tolist() if by_length else list(range(len(self)))
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def batches(self, batch_size: int, by_length: bool = False) -> Iterator[dict[str, torch.Tensor]]:
        """Padded batches with attention masks, ready for ``model(**batch)``."""
        for indices in self.batch_indices(batch_size, by_length):
            ids, mask = self.pad(indices)
            yield {"input_ids": ids, "attention_mask": mask}

    def padding_fraction(self, batch_size: int, by_length: bool = False) -> float:
        """Share of positions in the padded batches that are padding (wasted compute)."""
        real = int(self.lengths.sum())
        padded = sum(len(idx) * int(self.lengths[idx].max()) for idx in self.batch_indices(batch_size, by_length))
        return 0.0 if padded == 0 else 1.0 - real / padded

    def summary(self, batch_size: int = 8) -> dict[str, float | int]:
        """Counts a user checks first: how many, how many tokens, how much padding and truncation."""
        truncated = sum(p.truncated for p in self.provenance)
        return {
            "asked": self.asked,
            "samples": len(self),
            "tokens": int(self.lengths.sum()),
            "mean_length": float(self.lengths.mean()) if len(self) else 0.0,
            "max_length": int(self.lengths.max()) if len(self) else 0,
            "padding_fraction": self.padding_fraction(batch_size),
            "truncated": truncated,
            "truncated_fraction": truncated / len(self) if len(self) else 0.0,
            "distinct_documents": len({p.row_id for p in self.provenance}),
        }

    def summary_rows(self, batch_size: int = 8) -> list[tuple[str, str]]:
        """The summary as (property, value) rows formatted for people."""
        s = self.summary(batch_size)
        count = f"{s['samples']:,}" + ("" if s["samples"] == s["asked"] else f" (asked {s['asked']:,})")
        return [
            ("Strategy", self.manifest.strategy),
            ("Samples", count),
            ("Tokens", f"{s['tokens']:,}"),
            ("Mean / max length", f"{s['mean_length']:,.0f} / {s['max_length']:,} tokens"),
            (f"Padding at batch size {batch_size}", f"{s['padding_fraction']:.1%}"),
            ("Truncated samples", f"{s['truncated']:,} ({s['truncated_fraction']:.1%})"),
            ("Distinct documents", f"{s['distinct_documents']:,}"),
            ("Starts with", self.manifest.tokenizer.get("prefix_text") or "no special token"),
            ("Token sha256", self.manifest.token_sha256[:16] + "…"),
        ]

    def preview(self, tokenizer, rows: int = 20, chars: int = 200) -> pd.DataFrame:
        """The first sequences decoded, with length, bucket and source."""
        shown = range(min(rows, len(self)))
        return pd.DataFrame(
            {
                "sample": list(shown),
                "tokens": [len(self.sequences[i]) for i in shown],
                "bucket": [self.provenance[i].bucket for i in shown],
                "source": [f"{self.provenance[i].source} @ {self.provenance[i].token_offset}" for i in shown],
                "text": [tokenizer.decode(self.sequences[i][:chars])[:chars].replace("\n", " ⏎ ") for i in shown],
            }
        )
