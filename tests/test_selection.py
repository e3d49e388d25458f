"""Selection strategies: embedding clusters, activation clusters, self-generated text."""
import numpy as np
import pytest

from engine.errors import SamplingError, SpecError
from engine.sampling import (
    ActivationClustersSpec,
    EmbeddingClustersSpec,
    SelfGeneratedSpec,
    build,
    rebuild,
)
from engine.sampling.clusters import cluster_select, pca_2d
from tests.conftest import TOPICS


def blobs(per_blob: int = 30, centers: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centers, 8)) * 20
    points = np.concatenate([c + rng.normal(size=(per_blob, 8)) for c in middle])
    return points, np.repeat(np.arange(centers), per_blob)


def test_cluster_selection_picks_one_per_well_separated_blob():
    points, blob = blobs()
    chosen, labels = cluster_select(points, k=6, nsamples=6, seed=0)
    assert sorted(blob[chosen].tolist()) == [0, 1, 2, 3, 4, 5]
    for index in chosen:  # each representative is its cluster's member nearest the centroid
        members = points[labels == labels[index]]
        distances = np.linalg.norm(members - members.mean(0), axis=1)
        assert np.isclose(np.linalg.norm(points[index] - members.mean(0)), distances.min())


def test_fewer_clusters_than_samples_share_samples_by_cluster_size():
    points, blob = blobs(per_blob=20, centers=3)
    points = np.concatenate([points, points[blob == 0] + 0.01])  # blob 0 now holds twice as many
    chosen, labels = cluster_select(points, k=3, nsamples=8, seed=1)
    counts = np.bincount(labels[chosen], minlength=3)
    assert len(set(chosen.tolist())) == 8 and sorted(counts.tolist()) == [2, 2, 4]
    assert pca_2d(points).shape == (len(points), 2)


def test_embedding_clusters_cover_every_topic_deterministically(topical_corpus, tiny_llama):
    spec = EmbeddingClustersSpec(nsamples=4, length=128, min_tokens=1, seed=3)
    first = build(topical_corpus, tiny_llama.tokenizer, spec)
    again = build(topical_corpus, tiny_llama.tokenizer, spec)
    assert len(first) == 4 and first.manifest.token_sha256 == again.manifest.token_sha256
    assert sorted(p.source for p in first.provenance) == sorted(TOPICS)  # one per topic
    selection = first.selection
    assert len(selection) == 40 and selection["selected"].sum() == 4 and selection["cluster"].nunique() == 4
    assert rebuild(first.manifest, topical_corpus, tiny_llama.tokenizer).manifest.token_sha256 == first.manifest.token_sha256


def test_activation_clusters_use_the_model_and_return_exactly_nsamples(topical_corpus, tiny_llama):
    spec = ActivationClustersSpec(nsamples=5, length=96, min_tokens=1, candidates=40, seed=0)
    with pytest.raises(SamplingError, match="pass model="):
        build(topical_corpus, tiny_llama.tokenizer, spec)
    first = build(topical_corpus, tiny_llama.tokenizer, spec, model=tiny_llama)
    again = build(topical_corpus, tiny_llama.tokenizer, spec, model=tiny_llama)
    assert len(first) == 5 and first.manifest.token_sha256 == again.manifest.token_sha256
    assert len({p.row_id for p in first.provenance}) == 5 and all(p.bucket.startswith("cluster ") for p in first.provenance)
    with pytest.raises(SamplingError, match="outside the model's 2 blocks"):
        build(topical_corpus, tiny_llama.tokenizer, ActivationClustersSpec(nsamples=5, layer=7, min_tokens=1, candidates=40),
              model=tiny_llama)


def test_self_generated_text_is_reproducible_starts_like_inference_and_respects_the_length(topical_corpus, tiny_llama):
    spec = SelfGeneratedSpec(nsamples=5, length=24, batch_size=2, seed=4, prompts=("The", "In"))
    first = build(topical_corpus, tiny_llama.tokenizer, spec, model=tiny_llama)
    again = build(topical_corpus, tiny_llama.tokenizer, spec, model=tiny_llama)
    assert len(first) == 5 and first.manifest.token_sha256 == again.manifest.token_sha256
    bos = tiny_llama.tokenizer("x").input_ids[0]
    assert all(s[0] == bos and 2 < len(s) <= 24 for s in first.sequences)
    assert [p.source for p in first.provenance].count("self-generated:prompt 0") == 3
    other = build(topical_corpus, tiny_llama.tokenizer, SelfGeneratedSpec(nsamples=5, length=24, seed=5), model=tiny_llama)
    assert other.manifest.token_sha256 != first.manifest.token_sha256


def test_selection_specs_refuse_impossible_settings():
    with pytest.raises(SpecError, match="clusters"):
        EmbeddingClustersSpec(nsamples=4, clusters=9)
    with pytest.raises(SpecError, match="candidates"):
        EmbeddingClustersSpec(nsamples=40, candidates=10)
    with pytest.raises(SpecError, match="positive"):
        SelfGeneratedSpec(temperature_end=0)
