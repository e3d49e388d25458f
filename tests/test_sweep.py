"""Sample-count sweeps: every snapshot equals a separate collection on the same first n samples."""
import datasets
import numpy as np
import pytest
import torch

from engine.errors import CalibscopeError, SpecError
from engine.experiments.sweep import SweepSpec, sweep
from engine.hooks import Side, select_layers
from engine.models.layers import LAYER_KINDS
from engine.quant.methods.awq_pass import InputSums
from engine.runner import PassRequest, run_pass
from engine.sampling import RandomSpec, build
from engine.stats import HessianSpec, StatsSpec, collect
from engine.stats.blocks import headroom_amax
from engine.stats.hessian_report import collect_hessians, hessians_from_sums
from engine.stats.prefixes import prefix_buckets


@pytest.fixture(scope="module")
def calibration(tiny_llama):
    texts = [f"Sample {i}: " + "numbers and words " * (2 + i % 7) + "x" * i for i in range(12)]
    data = datasets.Dataset.from_dict({"text": texts, "source": ["s"] * 12, "row_id": list(range(12))})
    return build(data, tiny_llama.tokenizer, RandomSpec(nsamples=12, length=128))


def test_each_row_is_charged_to_the_first_count_that_includes_it_and_default_counts_are_powers_of_two():
    order = np.array([4, 0, 3, 1, 2])  # positions: row 4 first, row 0 second, ...
    assert prefix_buckets([order, np.arange(5)], [1, 2, 4, 5]).tolist() == [[1, 2, 3, 2, 0], [0, 1, 2, 2, 3]]
    assert SweepSpec().resolved_counts(12) == [1, 2, 4, 8, 12]
    assert SweepSpec(counts=(3, 6)).resolved_counts(12) == [3, 6, 12]
    with pytest.raises(SpecError, match="the set has 12 samples"):
        SweepSpec(counts=(20,)).resolved_counts(12)


@pytest.mark.parametrize("execution", ["whole-model", "block-by-block"])
def test_snapshots_equal_separate_collections_on_the_same_samples(tiny_llama, calibration, execution):
    spec = SweepSpec(counts=(3, 6, 12), shuffles=2, seed=5, snapshot_dtype="float32", batch_size=4, execution=execution)
    result = sweep(tiny_llama, calibration, spec)
    assert result.counts == [3, 6, 12] and set(result.rows["shuffle"]) == {0, 1}
    full = collect_hessians(tiny_llama, calibration, HessianSpec(diagnostics="none"))
    full_stats = collect(tiny_llama, calibration, StatsSpec(percentiles=(99.99,), channel_histograms=False))
    full_means = mean_magnitudes(tiny_llama, calibration)
    for shuffle in (0, 1):
        order = np.random.default_rng(5 + shuffle).permutation(12).tolist()
        for count in (3, 6):
            subset = calibration.subset(order[:count])
            stats = collect(tiny_llama, subset, StatsSpec(percentiles=(99.99,), channel_histograms=False))
            hessians = collect_hessians(tiny_llama, subset, HessianSpec(diagnostics="none"))
            means = mean_magnitudes(tiny_llama, subset)
            rows = result.rows[(result.rows["shuffle"] == shuffle) & (result.rows["count"] == count)].set_index("key")
            summary = stats.summary[stats.summary["shared_with"] == ""].set_index("key")
            assert set(rows.index) == set(summary.index)
            np.testing.assert_allclose(rows["absmax"], summary.loc[rows.index, "absmax"], rtol=1e-6)
            np.testing.assert_allclose(rows["percentile"], summary.loc[rows.index, "p99.99"], rtol=1e-6)
            for key in rows.index:
                expected = (torch.linalg.matrix_norm(hessians.hessian(key) - full.hessian(key))
                            / torch.linalg.matrix_norm(full.hessian(key)))
                assert rows.loc[key, "hessian_change"] == pytest.approx(float(expected), rel=1e-3, abs=1e-6)
                whole, part = full_stats.arrays(key), stats.arrays(key)
                minmax = float(whole["absmax"].max()) / float(part["absmax"].max()) - 1
                assert rows.loc[key, "nvfp4_minmax_change"] == pytest.approx(abs(minmax), rel=1e-5, abs=1e-9)
                awq = torch.linalg.vector_norm(means[key] - full_means[key]) / torch.linalg.vector_norm(full_means[key])
                assert rows.loc[key, "awq_mean_change"] == pytest.approx(float(awq), rel=1e-5, abs=1e-9)
                if "block_counts" in whole:  # NVFP4's headroom global scale from the same blocks' histogram
                    amax = [headroom_amax(a["block_counts"], float(a["absmax"].max())) for a in (whole, part)]
                    assert rows.loc[key, "nvfp4_headroom_change"] == pytest.approx(abs(amax[0] / amax[1] - 1), rel=1e-6, abs=1e-9)
    at_n = result.rows[result.rows["count"] == 12]
    assert (at_n[["absmax_change", "percentile_change", "hessian_change", "awq_mean_change"]] == 0).all().all()
    curve = result.curves("hessian_change")
    assert list(curve["count"]) == [3, 6, 12] and curve["mean"].iloc[0] > curve["mean"].iloc[1] > 0
    assert (curve["low"] <= curve["mean"]).all() and (curve["mean"] <= curve["high"]).all()


def mean_magnitudes(loaded, calibration) -> dict[str, torch.Tensor]:
    """AWQ's x̄ (mean |x| per channel) of every distinct input, as its own pass accumulates it."""
    layers = select_layers(loaded.model, LAYER_KINDS, "", False)
    found = run_pass(loaded, calibration, PassRequest(layers, (Side.INPUT,), InputSums, lambda layer: 0, batch_size=4))
    return {key: accumulator.mean() for key, accumulator in found.accumulators.items()}


def test_subset_is_a_set_of_its_own(calibration):
    subset = calibration.subset([5, 0, 7])
    assert len(subset) == 3 and subset.manifest.samples == 3 and np.array_equal(subset.sequences[0], calibration.sequences[5])
    assert subset.manifest.token_sha256 != calibration.manifest.token_sha256


def test_a_sweeps_whole_set_sums_give_the_hessian_report_a_collection_gives(tiny_llama, calibration):
    result = sweep(tiny_llama, calibration, SweepSpec(shuffles=2, batch_size=4, keep_totals=True))
    spec = HessianSpec()
    from_sweep = hessians_from_sums(tiny_llama, calibration, spec, result.totals, result.shared)
    collected = collect_hessians(tiny_llama, calibration, spec)
    assert from_sweep.shared_with == collected.shared_with and set(from_sweep.hessians) == set(collected.hessians)
    for key, hessian in collected.hessians.items():
        torch.testing.assert_close(from_sweep.hessians[key], hessian, rtol=1e-5, atol=1e-6)
    columns = ["layer", "tokens", "rank", "dead_channels", "min_damping"]
    assert from_sweep.diagnostics[columns].equals(collected.diagnostics[columns])
    assert from_sweep.meta["calibration_sha256"] == collected.meta["calibration_sha256"]
    with pytest.raises(CalibscopeError, match="No summed Hessians"):
        hessians_from_sums(tiny_llama, calibration, spec, {}, result.shared)
