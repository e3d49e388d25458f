"""packed: documents in random order, concatenated with EOS between them, cut into blocks of `length` tokens (AWQ style)."""
from __future__ import annotations

import numpy as np

from engine.sampling.context import Draft, SamplingContext
from engine.sampling.specs import PackedSpec
from engine.sampling.tokens import encode

ENCODE_CHUNK = 256


def packed(context: SamplingContext, spec: PackedSpec, rng: np.random.Generator) -> Draft:
    block = spec.length - len(context.prefix)
    needed = spec.nsamples * block
    separator = np.array([context.eos_id] if context.eos_id is not None else [], dtype=np.int64)
    order = rng.permutation(len(context.texts))
    pieces, owners, starts, total, used = [], [], [], 0, 0
    while total < needed and used < len(order):  # tokenize only as many documents as the blocks need
        chunk = order[used:used + ENCODE_CHUNK]
        for document, ids in zip(chunk, encode(context.tokenizer, [context.texts[d] for d in chunk])):
            owners.append(int(document))
            starts.append(total)
            pieces.append(np.concatenate([ids, separator]))
            total += len(pieces[-1])
        used += len(chunk)
    stream = np.concatenate(pieces) if pieces else np.array([], dtype=np.int64)
    blocks = min(spec.nsamples, len(stream) // block)
    sequences = [context.with_prefix(stream[i * block:(i + 1) * block]) for i in range(blocks)]
    starts_array = np.asarray(starts)
    provenance = []
    for i in range(blocks):
        piece = int(np.searchsorted(starts_array, i * block, side="right") - 1)
        provenance.append(context.row(owners[piece], i * block - starts[piece]))
    contributing = int(np.searchsorted(starts_array, blocks * block, side="left")) if blocks else 0
    notes = [f"{contributing:,} documents packed into {blocks:,} blocks of {spec.length:,} tokens, EOS between documents."]
    if blocks < spec.nsamples:
        notes.append(f"The corpus holds only {len(stream):,} tokens: {blocks:,} blocks of the {spec.nsamples:,} asked.")
    return Draft(sequences, provenance, notes)
