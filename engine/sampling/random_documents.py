"""random: whole documents drawn without replacement, truncated to `length` tokens."""
from __future__ import annotations

import numpy as np

from engine.sampling.context import Draft, SamplingContext
from engine.sampling.specs import RandomSpec
from engine.sampling.tokens import encode


def random_documents(context: SamplingContext, spec: RandomSpec, rng: np.random.Generator) -> Draft:
    prefix_length = len(context.prefix)
    body = spec.length - prefix_length
    eligible = np.flatnonzero(context.lengths + prefix_length >= spec.min_tokens)
    chosen = rng.permutation(eligible)[: spec.nsamples]
    notes = []
    if len(chosen) < spec.nsamples:
        notes.append(
            f"The corpus has only {len(eligible):,} documents of at least {spec.min_tokens} tokens; "
            f"returning {len(chosen):,} of the {spec.nsamples:,} asked."
        )
    encoded = encode(context.tokenizer, [context.texts[i] for i in chosen])
    sequences = [context.with_prefix(ids[:body]) for ids in encoded]
    provenance = [context.row(i, 0, truncated=len(ids) > body) for i, ids in zip(chosen, encoded)]
    truncated = sum(p.truncated for p in provenance)
    if truncated:
        notes.append(f"{truncated:,} of {len(chosen):,} documents were longer than {spec.length:,} tokens and were truncated.")
    return Draft(sequences, provenance, notes)
