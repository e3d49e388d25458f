"""coverage: the samples that together excite the model's outlier channels (and reach its experts).

COVERCAL-style selection (arXiv 2604.24008): score up to ``candidates`` documents in one head-less
forward (the model resident, as activation clusters need it) (each one's per-channel max |x| at
every linear input, its tokens per expert), take the pool's outlier channels and every expert as
targets, and pick samples by greedy weighted set cover.
"""
from __future__ import annotations

import numpy as np

from engine.errors import SamplingError
from engine.memo import OwnerMemo
from engine.sampling.cluster_selection import candidate_documents
from engine.sampling.context import Draft, SamplingContext
from engine.sampling.cover import Target, covers, greedy_cover, outlier_targets, score_sequences
from engine.sampling.manifest import token_hash
from engine.sampling.specs import CoverageSpec
from engine.sampling.tokens import encode, pad_id

# Scores of recently scored candidate pools, per model: a comparison builds sets of several sizes
# from the same seed's pool, and each scoring is a forward over every candidate.
_SCORED: OwnerMemo = OwnerMemo(keep=4)


def coverage(context: SamplingContext, spec: CoverageSpec, rng: np.random.Generator) -> Draft:
    if context.model is None:
        raise SamplingError("Coverage selection scores documents with the target model: pass the loaded model to build().")
    documents = candidate_documents(context, spec, rng)
    encoded = encode(context.tokenizer, [context.texts[i] for i in documents])
    body = spec.length - len(context.prefix)
    sequences = [context.with_prefix(ids[:body]) for ids in encoded]
    scores = _SCORED.get_or_compute(context.model.model, token_hash(sequences),
                                    lambda: score_sequences(context.model, sequences, pad_id(context.tokenizer)))
    targets = outlier_targets(scores, spec.outlier_ratio)
    covered = covers(scores, targets, spec.fraction)
    chosen, _gains = greedy_cover(covered, targets.weight, spec.nsamples, rng)
    provenance = [context.row(documents[i], 0, bucket=f"pick {rank + 1}", truncated=len(encoded[i]) > body)
                  for rank, i in enumerate(chosen)]
    channels = targets.kind == Target.CHANNEL.value
    reached = covered[chosen].any(0)
    notes = [(f"{len(documents):,} candidate documents scored; {int(channels.sum()):,} outlier channels (max above "
              f"{spec.outlier_ratio:g}x their input's median) in {len(set(targets.key[channels]))} inputs; the {len(chosen)} "
              f"chosen reach {int(reached[channels].sum()):,} of them (>= {spec.fraction:.0%} of the candidates' max) where "
              f"the candidates reach {int(covered.any(0)[channels].sum()):,}.")]
    if (~channels).any():
        notes.append(f"Experts reached: {int(reached[~channels].sum())} of {int((~channels).sum())} "
                     f"(the candidates reach {int(covered.any(0)[~channels].sum())}).")
    return Draft([sequences[i] for i in chosen], provenance, notes)
