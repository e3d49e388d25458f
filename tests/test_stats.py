"""Streaming statistics against one-shot references on the same data."""
import datasets
import pytest
import torch

from engine import ModelSpec, load_model
from engine.hooks import observing
from engine.sampling import RandomSpec, build
from engine.stats import (
    ActivationAccumulator,
    StatsReport,
    StatsSpec,
    TokenIndex,
    collect,
    select_layers,
)
from engine.stats.accumulators import CHANNEL_BINS, TENSOR_BINS

QUANTILES = torch.tensor([0.5, 0.999, 0.9999, 0.99999], dtype=torch.float64)


def heavy_tailed(rows=6000, channels=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, channels, generator=generator) * torch.linspace(0.1, 3, channels)
    x[torch.randint(0, rows, (40,), generator=generator), 5] *= 60  # an outlier channel
    return x


def tokens_for(n, offset=0):
    return TokenIndex(torch.arange(offset, offset + n), torch.arange(offset, offset + n) % 7)


def fed(x, chunks):
    acc = ActivationAccumulator(x.shape[1])
    start = 0
    for part in torch.tensor_split(x, chunks):
        acc.update(part, tokens_for(len(part), start))
        start += len(part)
    return acc.result(QUANTILES)


def bin_width_at(value, bins):
    edges = bins.edges()
    index = int(torch.searchsorted(edges, torch.tensor([value], dtype=torch.float64), right=True)) - 1
    return float(edges[min(index + 1, len(edges) - 1)] - edges[index])


def assert_within_one_bin(estimate, values, quantile, bins):
    """torch.quantile interpolates between the two order statistics around rank q(n-1); the
    histogram estimate must lie within one bin of that interval (in a dense region: of the value)."""
    ordered = torch.sort(values.double().flatten()).values
    position = quantile * (len(ordered) - 1)
    low, high = float(ordered[int(position)]), float(ordered[min(int(position) + 1, len(ordered) - 1)])
    assert low - bin_width_at(low, bins) <= float(estimate) <= high + bin_width_at(high, bins), (estimate, low, high)


def test_ranges_and_moments_are_exact():
    x = heavy_tailed()
    result = fed(x, chunks=7)
    reference = x.double()
    assert torch.equal(result["min"], x.amin(0)) and torch.equal(result["max"], x.amax(0))
    assert torch.equal(result["absmax"], x.abs().amax(0))
    torch.testing.assert_close(result["mean"], reference.mean(0), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(result["std"], reference.std(0, unbiased=False), rtol=1e-5, atol=1e-8)
    assert torch.equal(result["count"], torch.full((24,), 6000))
    torch.testing.assert_close(result["tensor_mean"], reference.mean(), rtol=1e-6, atol=1e-9)


def test_percentiles_within_one_bin_of_torch_quantile():
    x = heavy_tailed()
    result = fed(x, chunks=5)
    for estimate, quantile in zip(result["tensor_percentiles"], QUANTILES.tolist()):
        assert_within_one_bin(estimate, x.abs(), quantile, TENSOR_BINS)
    dense = torch.quantile(x.abs().double().flatten(), torch.tensor([0.5, 0.999], dtype=torch.float64))
    for estimate, truth in zip(result["tensor_percentiles"][:2], dense):  # where values are dense: one bin of the value
        assert abs(float(estimate) - float(truth)) <= bin_width_at(float(truth), TENSOR_BINS)
    for channel in (0, 5, 23):
        for estimate, quantile in zip(result["channel_percentiles"][:, channel], QUANTILES.tolist()):
            assert_within_one_bin(estimate, x[:, channel].abs(), quantile, CHANNEL_BINS)


def test_merge_of_halves_equals_the_whole_and_batch_size_does_not_matter():
    x = heavy_tailed()
    whole = fed(x, chunks=1)
    first, second = ActivationAccumulator(24), ActivationAccumulator(24)
    first.update(x[:2500], tokens_for(2500))
    second.update(x[2500:], tokens_for(3500, 2500))
    merged = first.merge(second).result(QUANTILES)
    for other in (merged, fed(x, chunks=13)):
        for name in ("min", "max", "absmax", "count", "tensor_counts", "absmax_row", "absmax_position", "tensor_percentiles"):
            assert torch.equal(other[name], whole[name]), name
        assert torch.equal(other["channel_percentiles"], whole["channel_percentiles"])
        # moments: per-batch sums are float32 (float64 across batches), so only rounding may differ
        torch.testing.assert_close(other["mean"], whole["mean"], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(other["std"], whole["std"], rtol=1e-5, atol=1e-7)


def test_absmax_location_points_at_the_maximum():
    x = heavy_tailed()
    result = fed(x, chunks=9)
    for channel in range(24):
        row = int(result["absmax_row"][channel])
        assert x[row, channel].abs() == result["absmax"][channel]  # rows here are the token indices


def test_nan_and_inf_are_counted_and_kept_out_of_the_moments():
    x = heavy_tailed(rows=100, channels=6)[:, :4].contiguous()
    x[3, 0], x[4, 0], x[5, 1] = float("nan"), float("inf"), float("-inf")
    acc = ActivationAccumulator(4)
    acc.update(x, tokens_for(100))
    result = acc.result(QUANTILES)
    assert result["nan"].tolist() == [1, 0, 0, 0] and result["inf"].tolist() == [1, 1, 0, 0]
    assert result["count"].tolist() == [98, 99, 100, 100]
    assert result["max"][0] == float("inf") and result["min"][1] == float("-inf")
    finite = x[:, 2:].double()
    torch.testing.assert_close(result["mean"][2:], finite.mean(0))
    clean0 = torch.cat([x[:3, 0], x[5:, 0]]).double()  # rows 3 (NaN) and 4 (Inf) left out
    torch.testing.assert_close(result["mean"][0], clean0.mean())
    assert int(result["tensor_counts"].sum()) == 400 - 3  # only finite values in the histogram


# --- through the model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelSpec("tiny-random-llama", dtype="float32"))  # a batch-invariant reference forward


@pytest.fixture(scope="module")
def calibration(tiny):
    # distinct openings: causal attention then gives every row its own activations (no exact ties)
    texts = [f"{i}: " + ("token soup " * n)[: 3 * n + 5] for i, n in enumerate((3, 40, 17, 90, 8, 60, 25, 33, 71, 12))]
    data = datasets.Dataset.from_dict({"text": texts, "source": [f"t{i}" for i in range(10)], "row_id": list(range(10))})
    return build(data, tiny.tokenizer, RandomSpec(nsamples=10, length=512))


def reference_inputs(tiny, calibration, layer_name):
    """One-shot reference: run each sample alone (no padding) and keep the layer's whole input."""
    module = dict(tiny.model.named_modules())[layer_name]
    seen = []
    with observing([(module, "input", lambda t: seen.append(t.reshape(-1, t.shape[-1]).clone()))]), torch.no_grad():
        for sequence in calibration.sequences:
            tiny.model(input_ids=torch.from_numpy(sequence)[None])
    return torch.cat(seen)


@pytest.mark.parametrize("layer", ["model.layers.0.self_attn.k_proj", "model.layers.1.mlp.down_proj",
                                   "model.layers.1.mlp.up_proj"])
def test_collect_matches_unpadded_one_shot_reference(tiny, calibration, layer):
    report = collect(tiny, calibration, StatsSpec(batch_size=4))  # padded batches of mixed lengths
    arrays = report.arrays(layer)
    reference = reference_inputs(tiny, calibration, layer)
    assert int(arrays["count"][0]) == reference.shape[0] == int(calibration.lengths.sum())
    torch.testing.assert_close(arrays["min"], reference.amin(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(arrays["max"], reference.amax(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(arrays["mean"], reference.double().mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(arrays["std"], reference.double().std(0, unbiased=False), rtol=1e-4, atol=1e-6)


def test_batch_size_and_padding_side_do_not_change_results(tiny, calibration):
    by_eight = collect(tiny, calibration, StatsSpec(batch_size=8))
    calibration.padding_side = "left"
    try:
        one_by_one = collect(tiny, calibration, StatsSpec(batch_size=1))  # no padding at all
    finally:
        calibration.padding_side = "right"
    for key in by_eight.channels:
        a, b = by_eight.channels[key], one_by_one.channels[key]
        torch.testing.assert_close(a["max"], b["max"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["mean"], b["mean"], rtol=1e-4, atol=1e-6)
        assert torch.equal(a["absmax_row"], b["absmax_row"]) and torch.equal(a["absmax_position"], b["absmax_position"])


def test_shared_inputs_are_found_at_run_time(tiny, calibration):
    report = collect(tiny, calibration, StatsSpec())
    shared = dict(zip(report.summary["key"], report.summary["shared_with"]))
    assert shared["model.layers.0.self_attn.v_proj"] == "model.layers.0.self_attn.q_proj"
    assert shared["model.layers.1.mlp.up_proj"] == "model.layers.1.mlp.gate_proj"
    assert shared["model.layers.1.mlp.down_proj"] == "" and report.meta["distinct"] == 8


def test_attribution_points_at_the_token_that_set_the_max(tiny, calibration):
    report = collect(tiny, calibration, StatsSpec(batch_size=3))
    layer = "model.layers.1.mlp.down_proj"
    row = report.summary.set_index("key").loc[layer]
    module = dict(tiny.model.named_modules())[layer]
    seen = []
    with observing([(module, "input", lambda t: seen.append(t[0].clone()))]):
        tiny.model(input_ids=torch.from_numpy(calibration.sequences[row["absmax_row"]])[None])
    value = seen[0][row["absmax_position"], row["top_channel"]].abs()
    assert float(value) == pytest.approx(row["absmax"], rel=1e-5)


def test_early_stop_and_selection_give_the_same_numbers(tiny, calibration):
    full = collect(tiny, calibration, StatsSpec())
    first_block = collect(tiny, calibration, StatsSpec(name_pattern=r"layers\.0\."))
    assert set(first_block.summary["layer"]).issubset(set(full.summary["layer"])) and len(first_block.summary) == 7
    for key in first_block.channels:
        assert torch.equal(first_block.channels[key]["max"], full.channels[key]["max"])
    assert len(select_layers(tiny.model, StatsSpec(include_head=True))) == 15


def test_head_is_observed_only_when_asked(tiny, calibration):
    with_head = collect(tiny, calibration, StatsSpec(include_head=True, name_pattern="lm_head"))
    assert list(with_head.summary["layer"]) == ["lm_head"] and with_head.summary["tokens"][0] == calibration.lengths.sum()


def test_hooks_are_removed_after_an_exception(tiny, calibration):
    class Boom(Exception):
        pass

    modules = [layer.module for layer in select_layers(tiny.model, StatsSpec(include_head=True))]
    with pytest.raises(Boom), observing([(m, "input", lambda t: (_ for _ in ()).throw(Boom())) for m in modules]):
        tiny.model(input_ids=torch.tensor([[1, 2, 3]]))
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in tiny.model.modules())


def test_report_save_load_round_trip(tmp_path, tiny, calibration):
    report = collect(tiny, calibration, StatsSpec(capture="both"))
    folder = report.save(tmp_path / "stats")
    loaded = StatsReport.load(folder)
    assert loaded.spec == report.spec and loaded.meta == report.meta
    assert loaded.summary.equals(report.summary)
    for key, arrays in report.channels.items():
        for name, value in arrays.items():
            assert torch.equal(loaded.channels[key][name], value), (key, name)


def test_locations_are_exact_for_the_top_channels_and_never_stale():
    from engine.stats.accumulators import LOCATED

    x = heavy_tailed(rows=3000, channels=300, seed=3)
    result = fed(x, chunks=6)
    absmax = result["absmax"]
    top = absmax.topk(LOCATED).indices
    for channel in top.tolist():  # the guarantee: every top-LOCATED channel has its true location
        assert x[int(result["absmax_row"][channel]), channel].abs() == absmax[channel]
    for channel in range(300):  # the others are right or marked unknown (-1), never stale
        row = int(result["absmax_row"][channel])
        assert row == -1 or x[row, channel].abs() == absmax[channel]
    assert (result["absmax_row"] == -1).any()  # with 300 channels some were left unlocated
