"""length-stratified: documents drawn per token-length bucket, with exact totals and no dropped documents."""
from __future__ import annotations

import numpy as np
import pandas as pd

from engine.sampling.allocation import allocate
from engine.sampling.context import Draft, SamplingContext
from engine.sampling.specs import LengthStratifiedSpec
from engine.sampling.tokens import encode


def bucket_labels(edges: tuple[int, ...]) -> list[str]:
    lows = [1, *[e + 1 for e in edges[:-1]]]
    return [f"{low:,}–{high:,}" for low, high in zip(lows, edges)]


def candidate_pieces(lengths: np.ndarray, body: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(document, token offset, token count) of every candidate: a whole document, or consecutive
    windows of ``body`` tokens for a document longer than that (the last window may be shorter)."""
    pieces = np.maximum(1, -(-lengths // body))  # ceil(length / body), at least one
    document = np.repeat(np.arange(len(lengths)), pieces)
    first = np.cumsum(pieces) - pieces
    index_in_document = np.arange(len(document)) - np.repeat(first, pieces)
    offset = index_in_document * body
    count = np.minimum(body, lengths[document] - offset)
    return document, offset, count


def length_stratified(context: SamplingContext, spec: LengthStratifiedSpec, rng: np.random.Generator) -> Draft:
    prefix_length = len(context.prefix)
    edges = np.asarray(spec.edges)
    document, offset, count = candidate_pieces(context.lengths, spec.edges[-1] - prefix_length)
    total = count + prefix_length
    keep = (count > 0) & (total >= spec.min_tokens)
    document, offset, count, total = document[keep], offset[keep], count[keep], total[keep]
    bucket = np.searchsorted(edges, total, side="left")  # edges[b-1] < total <= edges[b]
    available = np.bincount(bucket, minlength=len(edges))
    asked, selected = allocate(available, spec.nsamples, spec.allocation)

    picks = [rng.choice(np.flatnonzero(bucket == b), size=int(selected[b]), replace=False) for b in range(len(edges))]
    picked = np.concatenate(picks) if picks else np.array([], dtype=np.int64)
    needed = sorted(set(document[picked].tolist()))
    tokens = dict(zip(needed, encode(context.tokenizer, [context.texts[d] for d in needed])))
    labels = bucket_labels(spec.edges)
    sequences, provenance = [], []
    for piece in picked:
        d, start, n = int(document[piece]), int(offset[piece]), int(count[piece])
        sequences.append(context.with_prefix(tokens[d][start:start + n]))
        provenance.append(context.row(d, start, bucket=labels[bucket[piece]]))

    table = pd.DataFrame({"bucket": labels, "available": available, "asked": asked, "selected": selected})
    return Draft(sequences, provenance, _notes(spec, context, table, document, offset), table)


def _notes(spec, context, table: pd.DataFrame, document: np.ndarray, offset: np.ndarray) -> list[str]:
    notes = []
    chosen = int(table["selected"].sum())
    if chosen < spec.nsamples:
        notes.append(f"The corpus yields only {chosen:,} candidate sequences; "
                     f"returning {chosen:,} of the {spec.nsamples:,} asked.")
    short = table[table["available"] < table["asked"]]
    if len(short) and chosen:
        names = ", ".join(f"{row.bucket} ({row.available} of {row.asked})" for row in short.itertuples())
        notes.append(f"Buckets with too few documents: {names}; their shortfall went to the other buckets.")
    windowed = len(set(document[offset > 0].tolist()))
    if windowed:
        notes.append(
            f"{windowed:,} documents longer than {spec.edges[-1]:,} tokens were cut into windows "
            "(each window starts like an inference sequence)."
        )
    return notes
