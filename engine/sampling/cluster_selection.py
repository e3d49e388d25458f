"""embedding-clusters and activation-clusters: one representative document per region of an
embedding space (a sentence encoder's, or the target model's own hidden states)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.errors import SamplingError
from engine.sampling.clusters import cluster_select, selection_frame
from engine.sampling.context import Draft, SamplingContext
from engine.sampling.embeddings import hidden_state_embeddings, sentence_embeddings
from engine.sampling.specs import (
    ActivationClustersSpec,
    ClusterSpec,
    EmbeddingClustersSpec,
)
from engine.sampling.tokens import encode, pad_id


def candidate_documents(context: SamplingContext, spec, rng: np.random.Generator) -> np.ndarray:
    """Up to ``spec.candidates`` documents of at least ``spec.min_tokens`` tokens, in a seeded random order."""
    eligible = np.flatnonzero(context.lengths + len(context.prefix) >= spec.min_tokens)
    if len(eligible) < spec.nsamples:
        raise SamplingError(f"The corpus has {len(eligible):,} documents of at least {spec.min_tokens} tokens, fewer than the "
                            f"{spec.nsamples:,} samples asked; lower min_tokens or nsamples.")
    return rng.permutation(eligible)[: spec.candidates]


def _cluster_draft(context: SamplingContext, spec: ClusterSpec, rng: np.random.Generator,
                   embed: Callable[[np.ndarray, list[np.ndarray]], np.ndarray], space: str) -> Draft:
    documents = candidate_documents(context, spec, rng)
    encoded = encode(context.tokenizer, [context.texts[i] for i in documents])
    embeddings = embed(documents, encoded)
    chosen, labels = cluster_select(embeddings, spec.k, spec.nsamples, spec.seed)
    body = spec.length - len(context.prefix)
    sequences = [context.with_prefix(encoded[i][:body]) for i in chosen]
    provenance = [context.row(documents[i], 0, bucket=f"cluster {labels[i]}", truncated=len(encoded[i]) > body)
                  for i in chosen]
    notes = [(f"{len(documents):,} candidate documents embedded ({space}), {len(set(labels.tolist()))} k-means clusters, "
              f"{len(chosen)} representatives nearest the centroids.")]
    draft = Draft(sequences, provenance, notes)
    draft.selection = selection_frame(documents, embeddings, labels, chosen)
    return draft


def embedding_clusters(context: SamplingContext, spec: EmbeddingClustersSpec, rng: np.random.Generator) -> Draft:
    def embed(documents, _encoded):
        return sentence_embeddings([context.texts[i] for i in documents], spec.embed_tokens)

    return _cluster_draft(context, spec, rng, embed, "all-MiniLM-L6-v2")


def activation_clusters(context: SamplingContext, spec: ActivationClustersSpec, rng: np.random.Generator) -> Draft:
    if context.model is None:
        raise SamplingError("Activation clusters embed documents with the target model: pass the loaded model to build().")

    def embed(_documents, encoded):
        sequences = [context.with_prefix(ids[: spec.embed_tokens]) for ids in encoded]
        return hidden_state_embeddings(context.model, sequences, len(context.prefix), spec.layer, pad_id(context.tokenizer))

    layer = "middle block" if spec.layer < 0 else f"block {spec.layer}"
    return _cluster_draft(context, spec, rng, embed, f"the model's hidden states after the {layer}")
