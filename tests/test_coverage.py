"""Coverage: per-sample channel maxima against a one-sequence-at-a-time reference, the greedy
weighted set cover on hand-made cases, and the coverage strategy on tiny models."""
from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from engine import ModelSpec, load_model
from engine.errors import SpecError
from engine.hooks import observing
from engine.sampling import CoverageSpec, RandomSpec, build
from engine.sampling.cover import (
    CoverageTargets,
    SampleScores,
    coverage_table,
    covers,
    greedy_cover,
    outlier_targets,
    score_sequences,
)

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "zeta", "theta", "kappa", "sigma", "lambda"]


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 40)))) + f" {i}" * (i % 5) for i in range(40)]
    return datasets.Dataset.from_dict({"text": texts, "source": [f"c{i}" for i in range(40)], "row_id": list(range(40))})


def test_sample_channel_maxima_equal_one_sequence_at_a_time(tiny_llama, corpus):
    calibration = build(corpus, tiny_llama.tokenizer, RandomSpec(nsamples=7, length=48))
    scores = score_sequences(tiny_llama, calibration.sequences, calibration.pad_token_id, batch_size=3)
    layer = "model.layers.1.mlp.down_proj"
    module = dict(tiny_llama.model.named_modules())[layer]
    for row, sequence in enumerate(calibration.sequences):
        seen = []
        with observing([(module, "input", lambda t, seen=seen: seen.append(t.reshape(-1, t.shape[-1])))]), torch.no_grad():
            tiny_llama.model(input_ids=torch.from_numpy(sequence)[None])
        np.testing.assert_allclose(scores.channel_max[layer][row], seen[0].abs().amax(0).numpy(), rtol=1e-5)
    assert "lm_head" not in scores.channel_max and not scores.expert_tokens
    assert scores.samples == 7


def scores_of(values: np.ndarray) -> SampleScores:
    return SampleScores({"x": values}, {})


def test_outlier_targets_are_relative_to_the_inputs_median_and_weighted_by_excess():
    values = np.array([[1.0, 1.0, 10.0, 1.0, 1.0], [1.0, 30.0, 2.0, 1.0, 1.0]])  # channel maxima 1, 30, 10, 1, 1
    targets = outlier_targets(scores_of(values), outlier_ratio=6.0)  # median 1: outliers above 6
    assert targets.index.tolist() == [1, 2] and targets.reference.tolist() == [30.0, 10.0]
    np.testing.assert_allclose(targets.weight, [5.0, 10 / 6])
    covered = covers(scores_of(values), targets, fraction=0.9)
    assert covered.tolist() == [[False, True], [True, False]]  # 2.0 is not 90% of 10


def test_greedy_cover_takes_the_heaviest_new_weight_then_starts_a_new_round():
    covered = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    weights = np.array([1.0, 1.0, 1.0, 5.0])
    chosen, gains = greedy_cover(covered, weights, 4, np.random.default_rng(0))
    # 2 (weight 7), then 0 (target 0); every target is covered: a new round, 1 covers target 2 again;
    # the last sample covers nothing and still comes last
    assert chosen == [2, 0, 1, 3] and gains == [7.0, 1.0, 1.0, 0.0]
    ties = {tuple(greedy_cover(np.eye(3, dtype=bool), np.ones(3), 1, np.random.default_rng(seed))[0]) for seed in range(20)}
    assert ties == {(0,), (1,), (2,)}  # equal gains: the generator decides, so seeds differ
    assert greedy_cover(np.eye(3, dtype=bool), np.ones(3), 3, np.random.default_rng(1)) == \
        greedy_cover(np.eye(3, dtype=bool), np.ones(3), 3, np.random.default_rng(1))


def test_coverage_table_says_how_many_targets_a_set_reaches_and_who_does():
    targets = CoverageTargets(np.array(["channel"] * 3, dtype=object), np.array(["x"] * 3, dtype=object), np.array([0, 1, 2]),
                              np.ones(3), np.array([10.0, 10.0, 10.0]))
    table = coverage_table(scores_of(np.array([[9.5, 0, 0], [9.9, 9.1, 0]])), targets, sample_names=["first", "second"])
    row = table.iloc[0]
    assert (row["targets"], row["covered"], row["responsible"]) == (3, 2, "second, first")


def scored(loaded, calibration):
    return score_sequences(loaded, calibration.sequences, calibration.pad_token_id)


def test_the_coverage_strategy_covers_at_least_as_much_as_random(tiny_llama, corpus):
    spec = CoverageSpec(nsamples=4, length=48, candidates=24, seed=3)
    chosen = build(corpus, tiny_llama.tokenizer, spec, model=tiny_llama)
    again = build(corpus, tiny_llama.tokenizer, spec, model=tiny_llama)
    assert chosen.manifest.token_sha256 == again.manifest.token_sha256 and len(chosen) == 4
    assert "outlier channels" in chosen.manifest.notes[-1] and chosen.manifest.strategy == "coverage"
    pool = build(corpus, tiny_llama.tokenizer, RandomSpec(nsamples=24, length=48, seed=5))
    targets = outlier_targets(scored(tiny_llama, pool), spec.outlier_ratio)
    mine = covers(scored(tiny_llama, chosen), targets, 0.9).any(0) @ targets.weight
    randoms = [covers(scored(tiny_llama, build(corpus, tiny_llama.tokenizer, RandomSpec(nsamples=4, length=48, seed=s))),
                      targets, 0.9).any(0) @ targets.weight for s in range(3)]
    assert mine >= np.mean(randoms)
    with pytest.raises(SpecError, match="candidates"):
        CoverageSpec(nsamples=10, candidates=5)


def test_on_an_moe_model_experts_are_targets_and_a_starved_one_is_never_reached(corpus):
    from tests.moe import starved

    loaded = load_model(ModelSpec("tiny-random-qwen3-moe"))
    pool = build(corpus, loaded.tokenizer, RandomSpec(nsamples=12, length=32))
    with starved(dict(loaded.model.named_modules())["model.layers.0.mlp.experts"]):
        scores = scored(loaded, pool)
    assert scores.expert_tokens["model.layers.0.mlp.experts"][:, 3].sum() == 0
    targets = outlier_targets(scores)
    experts = targets.kind == "expert"
    assert experts.sum() == 8  # 2 blocks x 4 experts
    reached = covers(scores, targets).any(0)
    starved_target = experts & (targets.key == "model.layers.0.mlp.experts") & (targets.index == 3)
    assert not reached[starved_target].any() and reached[experts].sum() == 7
    table = coverage_table(scores, targets)
    row = table[(table["key"] == "model.layers.0.mlp.experts") & (table["kind"] == "expert")].iloc[0]
    assert (row["targets"], row["covered"]) == (4, 3)
