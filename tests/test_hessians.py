"""GPTQ Hessians against a float64 2/N XᵀX reference on the same tokens, and their diagnostics."""
import datasets
import pytest
import torch

from engine.errors import SpecError
from engine.figures import short_name
from engine.hooks import observing
from engine.run_report import hessian_section
from engine.sampling import RandomSpec, build
from engine.stats.hessian import HessianAccumulator
from engine.stats.hessian_diagnostics import diagnose, min_damping
from engine.stats.hessian_report import HESSIAN_FINDINGS, HessianReport, collect_hessians
from engine.stats.specs import HessianSpec
from ui.tabs.hessians import status_line


def test_accumulator_equals_float64_reference_and_merges():
    x = torch.randn(500, 24, dtype=torch.float64) * torch.linspace(0.1, 5, 24, dtype=torch.float64)
    whole = HessianAccumulator(24, torch.float64)
    whole.update(x)
    first, second = HessianAccumulator(24, torch.float64), HessianAccumulator(24, torch.float64)
    first.update(x[:123])
    second.update(x[123:])
    reference = 2.0 / 500 * x.T @ x
    torch.testing.assert_close(whole.result(), reference)
    torch.testing.assert_close(first.merge(second).result(), reference)
    assert whole.tokens == 500 and HessianAccumulator(3).result().abs().sum() == 0


@pytest.mark.parametrize("channels", [700, 2100])
def test_upper_strips_mirrored_equal_the_full_product_across_reads_and_merges(channels):
    """Only the upper triangle is summed (strip by strip); a read mirrors it, and updates or merges
    after a read still give the full product (the mirrored entries are rewritten, never summed into)."""
    x = torch.randn(300, channels, dtype=torch.float64)
    first, second = HessianAccumulator(channels, torch.float64), HessianAccumulator(channels, torch.float64)
    first.update(x[:100])
    torch.testing.assert_close(first.result(), 2.0 / 100 * x[:100].T @ x[:100])
    first.update(x[100:200])
    second.update(x[200:])
    torch.testing.assert_close(first.merge(second).result(), 2.0 / 300 * x.T @ x)
    torch.testing.assert_close(first.take(), 2.0 / 300 * x.T @ x)


@pytest.fixture(scope="module")
def calibration(tiny_llama):
    texts = [f"{i}: " + "hessian input text " * (i + 1) for i in range(9)]
    data = datasets.Dataset.from_dict({"text": texts, "source": [f"h{i}" for i in range(9)], "row_id": list(range(9))})
    return build(data, tiny_llama.tokenizer, RandomSpec(nsamples=9, length=256))


def reference_hessian(model, calibration, layer):
    module = dict(model.named_modules())[layer]
    rows = []
    with observing([(module, "input", lambda t: rows.append(t.reshape(-1, t.shape[-1]).double()))]), torch.no_grad():
        for sequence in calibration.sequences:  # one by one: no padding at all
            model(input_ids=torch.from_numpy(sequence)[None])
    x = torch.cat(rows)
    return 2.0 / x.shape[0] * x.T @ x, x.shape[0]


@pytest.mark.parametrize("layer", ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj",
                                   "model.layers.1.self_attn.o_proj"])
def test_collected_hessians_match_the_reference_without_padding(tiny_llama, calibration, layer):
    report = collect_hessians(tiny_llama, calibration, HessianSpec(batch_size=4, dtype="float64"))
    reference, tokens = reference_hessian(tiny_llama.model, calibration, layer)
    # the forward runs in float32: batched and single-sequence activations differ by float32 rounding
    scale = float(reference.abs().max())
    torch.testing.assert_close(report.hessian(layer), reference, rtol=1e-5, atol=1e-6 * scale)
    row = report.diagnostics.set_index("layer").loc[layer]
    assert row["tokens"] == tokens == int(calibration.lengths.sum())
    # the recorded normalisation converts to llm-compressor's per-sequence 2/n_samples XᵀX
    assert report.meta["normalisation"]["per"] == "token" and report.meta["tokens"] == tokens
    per_sequence = reference * tokens / len(calibration)
    torch.testing.assert_close(report.hessian(layer) * report.meta["tokens"] / report.meta["samples"], per_sequence,
                               rtol=1e-5, atol=1e-6 * scale * tokens / len(calibration))


def test_sharing_equals_per_module_accumulation_and_saves_memory(tiny_llama, calibration):
    shared = collect_hessians(tiny_llama, calibration, HessianSpec(diagnostics="none"))
    separate = collect_hessians(tiny_llama, calibration, HessianSpec(share_inputs=False, diagnostics="none"))
    assert shared.shared_with["model.layers.0.self_attn.k_proj"] == "model.layers.0.self_attn.q_proj"
    assert separate.shared_with == {} and len(separate.hessians) == 14 and len(shared.hessians) == 8
    for layer in separate.hessians:
        torch.testing.assert_close(shared.hessian(layer), separate.hessian(layer))
    assert shared.meta["memory_mb"] < separate.meta["memory_mb"] == shared.meta["memory_without_sharing_mb"]


def test_padding_and_batch_size_do_not_change_the_hessian(tiny_llama, calibration):
    padded = collect_hessians(tiny_llama, calibration, HessianSpec(batch_size=9, dtype="float64", diagnostics="none"))
    single = collect_hessians(tiny_llama, calibration, HessianSpec(batch_size=1, dtype="float64", diagnostics="none"))
    for layer in single.hessians:
        scale = float(single.hessian(layer).abs().max())
        torch.testing.assert_close(padded.hessian(layer), single.hessian(layer), rtol=1e-5, atol=1e-6 * scale)


def test_a_rank_deficient_calibration_set_is_diagnosed(tiny_llama):
    data = datasets.Dataset.from_dict({"text": ["abcdefghij"], "source": ["tiny"], "row_id": [0]})
    few = build(data, tiny_llama.tokenizer, RandomSpec(nsamples=1, min_tokens=1))  # BOS + 10 tokens: 11 < 32 channels
    report = collect_hessians(tiny_llama, few, HessianSpec(name_pattern=r"layers\.0\.self_attn\.q_proj"))
    row = report.diagnostics.iloc[0]
    assert row["tokens"] == 11 and row["rank"] == 11 and row["condition_number"] == float("inf")
    assert "needs at least 21 more tokens" in row["warning"]
    assert report.findings()["data_limited"] == [row["layer"]] and len(report.warnings) == 1
    prepared = report.hessian(row["layer"]).double()
    assert row["min_damping"] > 0
    mean = float(torch.diagonal(prepared).mean())
    eye = torch.eye(32, dtype=torch.float64)
    assert int(torch.linalg.cholesky_ex((prepared + row["min_damping"] * mean * eye).float())[1]) == 0
    assert min_damping(report.hessian(row["layer"]), (0.0,)) is None  # undamped, it does not factorize
    # the dashboard's status line and the HTML report say it in the same words
    said = HESSIAN_FINDINGS["data_limited"]
    assert f"**1** of 1 {said}: " in status_line(report)
    table = hessian_section(report).tables[0]
    assert table.to_dict("records")[0] == {"finding": f"inputs that {said}", "inputs": 1, "layers": short_name(row["layer"])}
    assert len(table) == sum(1 for layers in report.findings().values() if layers)  # one row per kind found


def test_dead_channels_are_reported_and_handled_like_gptq():
    x = torch.randn(200, 6, dtype=torch.float64)
    x[:, 2] = 0.0
    found, eigenvalues = diagnose("layer", 2 / 200 * x.T @ x, 200)
    assert found.dead_channels == 1 and found.rank == 5 and "never active" in found.warning
    assert eigenvalues[0] >= eigenvalues[-1] and min_damping(2 / 200 * x.T @ x) == 0.0  # the dead channel patched


def test_save_load_round_trip_with_module_names(tmp_path, tiny_llama, calibration):
    from safetensors.torch import load_file

    report = collect_hessians(tiny_llama, calibration, HessianSpec())
    folder = report.save(tmp_path / "hessians")
    names = set(load_file(str(folder / "hessians.safetensors")))
    assert names == set(report.diagnostics["layer"])  # one tensor per layer, named by module
    loaded = HessianReport.load(folder)
    for layer in report.diagnostics["layer"]:
        assert torch.equal(loaded.hessian(layer), report.hessian(layer))
    assert loaded.meta == report.meta and loaded.diagnostics.equals(report.diagnostics)


def test_cpu_storage_and_bad_specs(tiny_llama, calibration):
    report = collect_hessians(tiny_llama, calibration, HessianSpec(storage="cpu", diagnostics="none"))
    assert all(h.device.type == "cpu" for h in report.hessians.values())
    with pytest.raises(SpecError, match="dtype"):
        HessianSpec(dtype="float16")
    with pytest.raises(SpecError, match="storage"):
        HessianSpec(storage="disk")
