"""The runners: block by block (weights in memory or read from disk, activations on the device, in
CPU memory or on disk) equals the whole-model pass; the memory plan; data-parallel over gloo."""
from __future__ import annotations

import re
import socket
from dataclasses import replace

import datasets
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from engine import ModelSpec, load_model
from engine.errors import CalibscopeError
from engine.experiments import SweepSpec, sweep
from engine.hooks import decoder_blocks
from engine.models.tiny import build_tiny
from engine.quant import PRESETS, Calibrated, Quantization, quantize
from engine.quant.apply import QuantizedModel, module_weight, original_weights, quantized
from engine.quant.plan import quantizable_layers, quantized_weights
from engine.runner import Execution, PassRequest, plan_for, run_pass
from engine.runner.activations import ActivationStore, Location
from engine.sampling import RandomSpec, build
from engine.stats import HessianSpec, StatsSpec, collect, select_layers
from engine.stats.hessian_report import collect_hessians

TINY = ("tiny-random-llama", "tiny-random-gpt2", "tiny-random-gemma3")


def calibration_for(loaded, samples: int = 9):
    """Documents of different lengths (so batches carry padding), the same for every caller."""
    texts = [("The quick brown fox jumps over the lazy dog, and then some. " * (1 + i % 6)) + f"Note {i}."
             for i in range(40)]
    corpus = datasets.Dataset.from_dict({"text": texts, "source": [f"doc{i}" for i in range(40)], "row_id": list(range(40))})
    return build(corpus, loaded.tokenizer, RandomSpec(nsamples=samples, length=160, seed=1))


@pytest.fixture(scope="module", params=TINY)
def tiny(request, tmp_path_factory):
    """The tiny model loaded as usual, and the same weights read block by block from a checkpoint."""
    folder = tmp_path_factory.mktemp(request.param)
    model, tokenizer = build_tiny(request.param)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    resident = load_model(ModelSpec(str(folder), offload="none"))
    on_disk = load_model(ModelSpec(str(folder), offload="disk"))
    return resident, on_disk, calibration_for(resident)


def assert_same_statistics(first, second):
    assert set(first.channels) == set(second.channels)
    for key, arrays in first.channels.items():
        for name in ("min", "max", "count", "tensor_counts", "channel_percentiles", "absmax_row", "absmax_position"):
            assert torch.equal(arrays[name], second.channels[key][name]), (key, name)
        torch.testing.assert_close(arrays["mean"], second.channels[key]["mean"], rtol=1e-6, atol=1e-9)


def relative_difference(first: dict, second: dict) -> float:
    assert set(first) == set(second)
    return max(float((first[k] - second[k]).abs().max() / first[k].abs().max().clamp(min=1e-30)) for k in first)


def test_block_by_block_from_disk_equals_the_whole_model_pass(tiny):
    resident, on_disk, calibration = tiny
    whole = collect(resident, calibration, StatsSpec(batch_size=4))
    blockwise = collect(on_disk, calibration, StatsSpec(batch_size=4))
    assert whole.meta["plan"]["execution"] == "whole-model" and blockwise.meta["plan"]["execution"] == "block-by-block"
    assert blockwise.meta["plan"]["reason"] == "the model is offloaded"
    assert_same_statistics(whole, blockwise)
    assert whole.summary.drop(columns=["nan", "inf"]).equals(blockwise.summary.drop(columns=["nan", "inf"]))
    hessians = collect_hessians(resident, calibration, HessianSpec(batch_size=4))
    from_disk = collect_hessians(on_disk, calibration, HessianSpec(batch_size=4))
    assert relative_difference(hessians.hessians, from_disk.hessians) <= 1e-5
    assert hessians.shared_with == from_disk.shared_with and hessians.diagnostics.equals(from_disk.diagnostics)
    assert all(p.is_meta for p in decoder_blocks(on_disk.model).parameters())  # every block's weights went back to disk


@pytest.mark.parametrize("where", [Location.DEVICE, Location.DISK])
def test_resident_weights_block_by_block_with_activations_anywhere(tiny, where, monkeypatch):
    resident, _, calibration = tiny
    monkeypatch.setattr("engine.runner.plan._activation_location", lambda *args: where)
    whole = collect_hessians(resident, calibration, HessianSpec(batch_size=3))
    blockwise = collect_hessians(resident, calibration, HessianSpec(batch_size=3, execution="block-by-block"))
    assert blockwise.meta["plan"]["activations"] == where.value
    assert relative_difference(whole.hessians, blockwise.hessians) <= 1e-5


def test_a_sweep_block_by_block_snapshots_what_the_whole_model_sweep_does(tiny):
    resident, on_disk, calibration = tiny
    spec = SweepSpec(shuffles=2, batch_size=2)
    whole = sweep(resident, calibration, replace(spec, execution=Execution.WHOLE))
    blockwise = sweep(on_disk, calibration, spec)  # what a sweep with Hessians does unless asked
    columns = ["shuffle", "count", "key", "absmax", "percentile"]
    assert whole.rows[columns].equals(blockwise.rows[columns])
    torch.testing.assert_close(torch.tensor(whole.rows["hessian_change"].to_numpy()),
                               torch.tensor(blockwise.rows["hessian_change"].to_numpy()), rtol=1e-3, atol=1e-6)


def test_sequential_gptq_propagates_quantized_outputs_and_starts_like_one_pass(tiny):
    resident, on_disk, calibration = tiny
    spec = PRESETS["W4 g128 GPTQ"]
    one_pass, _ = quantize(resident, spec, Calibrated(hessians=collect_hessians(resident, calibration,
                                                                                HessianSpec(batch_size=4))))
    sequential, table = quantize(on_disk, Quantization(spec, sequential=True, hessians=HessianSpec(batch_size=4)),
                                 Calibrated(calibration))
    first = [name for name in one_pass.weights if ".0." in name]
    later = [name for name in one_pass.weights if ".1." in name]
    assert set(sequential.weights) == set(one_pass.weights) and len(table) == len(one_pass.weights)
    assert all(torch.equal(one_pass.weights[n], sequential.weights[n]) for n in first)  # block 0 sees float inputs
    assert not all(torch.equal(one_pass.weights[n], sequential.weights[n]) for n in later)  # later ones see quantized
    before = {name: tensor.clone() for name, tensor in resident.model.state_dict().items()}
    resident_sequential, _ = quantize(resident, Quantization(spec, sequential=True, hessians=HessianSpec(batch_size=4)),
                                      Calibrated(calibration))
    assert all(torch.equal(resident_sequential.weights[n], sequential.weights[n]) for n in sequential.weights)
    after = resident.model.state_dict()  # the model's own weights are never changed by a sequential run
    assert before.keys() == after.keys() and all(torch.equal(before[name], after[name]) for name in before)


def test_true_sequential_equals_a_reference_that_reruns_the_model_for_every_group(tiny):
    """GPTQModel's true-sequential GPTQ: each group of layers reading one input (q/k/v, o, gate/up,
    down) gets its Hessian with every earlier block and the block's earlier groups quantized. The
    reference re-runs the whole model, quantized so far, once per group."""
    resident, on_disk, calibration = tiny
    spec = PRESETS["W4 g128 GPTQ (gptqmodel)"]
    assert spec.weights.true_sequential
    got, table = quantize(on_disk, Quantization(spec, sequential=True, hessians=HessianSpec(batch_size=4)),
                          Calibrated(calibration))
    layers = {layer.name: layer for layer in quantizable_layers(resident.model, spec)}
    sharing = collect_hessians(resident, calibration, HessianSpec(batch_size=4, diagnostics="none")).shared_with
    groups: dict[str, list] = {}
    for name, layer in layers.items():
        groups.setdefault(sharing.get(name, name), []).append(layer)
    reference = QuantizedModel()
    for members in groups.values():
        pattern = "|".join(re.escape(layer.name) + "$" for layer in members)
        with quantized(resident, reference):
            hessians = collect_hessians(resident, calibration,
                                        HessianSpec(batch_size=4, name_pattern=pattern, diagnostics="none"))
        found = quantized_weights(members, original_weights(resident, members), spec.weights, hessians)
        for name, (_, fake, _, _) in found.items():
            reference.weights[name] = module_weight(layers[name], fake)
    assert set(got.weights) == set(reference.weights) and len(table) == len(layers)
    assert max(float((got.weights[n] - reference.weights[n]).abs().max()) for n in layers) < 1e-5
    block_level, _ = quantize(on_disk, Quantization(replace(spec, weights=replace(spec.weights, true_sequential=False)),
                                                    sequential=True, hessians=HessianSpec(batch_size=4)), Calibrated(calibration))
    first_groups = [layer.name for layer in next(iter(groups.values()))]  # the first group sees the same inputs either way
    assert all(torch.equal(block_level.weights[n], got.weights[n]) for n in first_groups)
    assert not all(torch.equal(block_level.weights[n], got.weights[n]) for n in layers)


def test_a_sequential_pass_stops_each_observing_run_after_the_last_observed_input(tiny):
    """The observing run's output is thrown away in a sequential pass: after the first batch (which
    runs to the end and teaches the router which input comes last) the block's last observed layer
    is never computed; the propagation runs compute it for every batch."""
    resident, _, calibration = tiny
    spec = PRESETS["W4 g128 GPTQ"]
    layers = quantizable_layers(resident.model, spec)
    blocks = len(decoder_blocks(resident.model))
    last = [[layer for layer in layers if f".{index}." in layer.name][-1].module for index in range(blocks)]
    calls = [0] * blocks
    handles = [module.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)) for i, module in enumerate(last)]
    try:
        quantize(resident, Quantization(spec, sequential=True, hessians=HessianSpec(batch_size=4)), Calibrated(calibration))
    finally:
        for handle in handles:
            handle.remove()
    batches = 3  # 9 samples, 4 a batch
    assert calls == [1 + batches] * (blocks - 1) + [1]


def test_the_memory_plan_counts_what_a_pass_holds_and_decides_by_it(tiny):
    resident, on_disk, calibration = tiny
    layers = select_layers(resident.model, StatsSpec())
    request = PassRequest(layers, StatsSpec().sides, lambda c, d: None, state_bytes=lambda layer: layer.in_features**2 * 4,
                          batch_size=4)
    plan = plan_for(resident, calibration, request)
    items = {item.what: item for item in plan.items}
    weights = sum(p.numel() * p.element_size() for p in resident.model.parameters())
    assert plan.execution is Execution.WHOLE and items["model weights"].megabytes == round(weights / 2**20, 2)
    assert items["accumulators, every layer"].megabytes == round(sum(l.in_features**2 * 4 for l in layers) / 2**20, 2)
    tight = plan_for(resident, calibration, PassRequest(**{**request.__dict__, "budget": 1}))
    assert tight.execution is Execution.BLOCKWISE and tight.activations is Location.DISK and "MB free" in tight.reason
    padded = sum(len(rows) * int(calibration.lengths[rows].max()) for rows in calibration.batch_indices(4, by_length=True))
    activations = next(item for item in tight.items if item.what == "activations between blocks")
    element = next(resident.model.parameters()).element_size()  # activations between blocks in the model's dtype
    assert activations.megabytes == round(padded * resident.info.hidden_size * element / 2**20, 2)
    assert list(tight.table().columns) == ["what", "MB", "where"]
    with pytest.raises(CalibscopeError, match="offloaded"):
        plan_for(on_disk, calibration, PassRequest(**{**request.__dict__, "execution": Execution.WHOLE}))


def test_the_lm_head_is_refused_block_by_block_with_a_reason(tiny):
    _resident, on_disk, calibration = tiny
    with pytest.raises(CalibscopeError, match="outside the decoder blocks"):
        collect(on_disk, calibration, StatsSpec(include_head=True))


def test_activation_store_round_trips_on_disk_and_cleans_up():
    store = ActivationStore(Location.DISK, torch.device("cpu"))
    tensor = torch.randn(2, 5, 3)
    store.put(0, tensor)
    assert torch.equal(store.get(0, torch.device("cpu")), tensor)
    folder = store._folder
    store.close()
    assert not folder.exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_ranks_equal_one_process(tmp_path):
    from tests.distributed_worker import run_rank

    out = tmp_path / "rank0.pt"
    mp.spawn(run_rank, args=(2, free_port(), str(out)), nprocs=2, join=True)
    ranks = torch.load(out, weights_only=False)
    loaded = load_model(ModelSpec("tiny-random-llama"))
    calibration = calibration_for(loaded)
    stats = collect(loaded, calibration, StatsSpec(batch_size=2))
    hessians = collect_hessians(loaded, calibration, HessianSpec(batch_size=2))
    assert relative_difference(hessians.hessians, ranks["hessians"]) <= 1e-5
    assert relative_difference(hessians.hessians, ranks["blockwise"]) <= 1e-5
    assert hessians.diagnostics["tokens"].tolist() == ranks["tokens"]
    swept = sweep(loaded, calibration, SweepSpec(shuffles=2, batch_size=2)).rows
    columns = ["shuffle", "count", "key", "absmax", "percentile"]
    assert swept[columns].equals(ranks["sweep"][columns])
    # bf16 buckets: ~0.1% of H
    np.testing.assert_allclose(swept["hessian_change"], ranks["sweep"]["hessian_change"], rtol=2e-2, atol=1e-3)
    for key, arrays in stats.channels.items():
        for name in ("min", "max", "count", "tensor_counts", "channel_percentiles", "absmax_row", "absmax_position"):
            assert torch.equal(arrays[name], ranks["channels"][key][name]), (key, name)
        torch.testing.assert_close(arrays["std"], ranks["channels"][key]["std"], rtol=1e-5, atol=1e-7)


def test_run_pass_without_after_block_returns_every_accumulator(tiny):
    resident, _, calibration = tiny
    layers = select_layers(resident.model, StatsSpec())
    seen = []
    request = PassRequest(layers, StatsSpec().sides, lambda channels, device: _Counter(seen), lambda layer: 0, batch_size=4,
                          execution=Execution.BLOCKWISE)
    result = run_pass(resident, calibration, request)
    assert set(result.accumulators) == {layer.name for layer in layers} - set(result.shared)
    assert sum(seen) == int(calibration.lengths.sum()) * len(result.accumulators)


class _Counter:
    def __init__(self, seen):
        self.seen = seen

    def update(self, x, tokens):
        self.seen.append(x.shape[0])


def test_gptq_block_by_block_without_propagation_equals_one_pass_quantization(tiny):
    resident, on_disk, calibration = tiny
    spec = PRESETS["W4 g128 GPTQ"]
    one_pass, table = quantize(resident, spec, Calibrated(hessians=collect_hessians(resident, calibration,
                                                                                    HessianSpec(batch_size=4))))
    by_block, block_table = quantize(on_disk, Quantization(spec, sequential=True, propagate=False,
                                                           hessians=HessianSpec(batch_size=4)), Calibrated(calibration))
    assert all(torch.allclose(one_pass.weights[n], by_block.weights[n], rtol=0, atol=1e-6) for n in one_pass.weights)
    assert block_table["gptq_loss"].to_numpy() == pytest.approx(table["gptq_loss"].to_numpy(), rel=1e-4)
