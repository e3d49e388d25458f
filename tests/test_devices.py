"""Device and dtype correctness: nothing is created without a device, bf16 models work, the
branch-free accumulator path (what accelerators run) equals the host-branch path, stacked GPTQ equals
one call per layer; and, where there is a GPU, the CUDA path itself (marked ``gpu``)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine import ModelSpec, load_model
from engine.experiments import SweepSpec, sweep
from engine.hooks import TokenIndex, observing
from engine.quant import PRESETS, Calibrated, Quantization, RotationSpec, evaluate, evaluation_windows, gptq
from engine.quant.activations.format_ranges import format_ranges
from engine.quant.methods.matrices import quantize_groups
from engine.stats import ActivationAccumulator, HessianSpec, StatsSpec, collect
from engine.stats.hessian_report import collect_hessians
from tests.test_runner import calibration_for, relative_difference

HELD_OUT = ["Some held out text that goes on for a while, with numbers 12 and 345 in it. " * 40]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name", ["tiny-random-gemma3", "tiny-random-gpt2"])
def test_no_step_creates_a_tensor_without_saying_where(name):
    """Under a default device of 'meta', a tensor made without an explicit device lands on meta and
    cannot mix with the CPU tensors around it: every step below would raise."""
    loaded = load_model(ModelSpec(name))
    calibration = calibration_for(loaded)
    with torch.device("meta"):
        stats = collect(loaded, calibration, StatsSpec(batch_size=4))
        hessians = collect_hessians(loaded, calibration, HessianSpec(batch_size=4))
        blockwise = collect_hessians(loaded, calibration, HessianSpec(batch_size=4, execution="block-by-block"))
        windows = evaluation_windows(loaded.tokenizer, HELD_OUT, 64, 2, "held out")
        report = evaluate(loaded, PRESETS["W4 g128 GPTQ"], Calibrated(stats=stats, hessians=hessians), windows)
        thorough = Quantization(PRESETS["W8A8 static (MSE)"], sensitivity="thorough")
        evaluate(loaded, thorough, Calibrated(stats=stats, hessians=hessians), windows)
        evaluate(loaded, PRESETS["FP8 W8A8 static"], Calibrated(stats=stats), windows)
        evaluate(loaded, PRESETS["FP8 W8A8 dynamic"], Calibrated(), windows)
        format_ranges(stats)
        swept = sweep(loaded, calibration, SweepSpec(shuffles=1, batch_size=4))
    assert report.quantized_perplexity > 1 and len(swept.rows)
    assert relative_difference(hessians.hessians, blockwise.hessians) < 1e-5


ROTATED = {"GPTQ, every input": replace(PRESETS["W4 g128 GPTQ"], rotation=RotationSpec()),
           "W4A4 int, where it helps": replace(PRESETS["W4A4 int (A4 per token)"],
                                               rotation=RotationSpec(placement="where it helps")),
           "NVFP4, blocks of 16": replace(PRESETS["NVFP4 W4A4"], rotation=RotationSpec(matrix="hadamard", block=16))}


def test_no_rotation_step_creates_a_tensor_without_saying_where():
    """The rotations' matrices, rotated Hessians, probe, own statistics pass and online hooks, under
    a default device of 'meta' (as above)."""
    loaded = load_model(ModelSpec("tiny-random-gemma3"))
    calibration = calibration_for(loaded)
    with torch.device("meta"):
        stats = collect(loaded, calibration, StatsSpec(batch_size=4))
        hessians = collect_hessians(loaded, calibration, HessianSpec(batch_size=4))
        windows = evaluation_windows(loaded.tokenizer, HELD_OUT, 64, 2, "held out")
        reports = {name: evaluate(loaded, spec, Calibrated(calibration, stats=stats, hessians=hessians), windows)
                   for name, spec in ROTATED.items()}
    assert all(report.quantized_perplexity > 1 for report in reports.values())
    assert all(report.layers["rotated"].any() for report in reports.values())


@pytest.mark.gpu
@cuda
def test_rotated_schemes_on_a_bfloat16_model_on_the_gpu_match_the_cpu():
    """The common case: a bf16 model on CUDA, rotated (its float model first: the original's logits)."""
    on_gpu = load_model(ModelSpec("tiny-random-gemma3", device="cuda", dtype="bfloat16"))
    on_cpu = load_model(ModelSpec("tiny-random-gemma3", dtype="bfloat16"))
    windows = {loaded.info.device: evaluation_windows(loaded.tokenizer, HELD_OUT, 64, 2, "held out")
               for loaded in (on_gpu, on_cpu)}
    found = {}
    for loaded in (on_gpu, on_cpu):
        calibration = calibration_for(loaded)
        calibrated = Calibrated(calibration, stats=collect(loaded, calibration, StatsSpec(batch_size=4)),
                                hessians=collect_hessians(loaded, calibration, HessianSpec(batch_size=4)))
        found[loaded.info.device] = {name: evaluate(loaded, spec, calibrated, windows[loaded.info.device])
                                     for name, spec in ROTATED.items()}
    for name in ROTATED:
        gpu, cpu = found[on_gpu.info.device][name], found[on_cpu.info.device][name]
        assert gpu.divergence.mean_kld == pytest.approx(cpu.divergence.mean_kld, rel=0.1, abs=1e-3), name
        assert list(gpu.layers["rotated"]) == list(cpu.layers["rotated"]), name


def test_a_bfloat16_model_on_the_cpu_accumulates_exact_float32_hessians():
    loaded = load_model(ModelSpec("tiny-random-llama", dtype="bfloat16"))
    assert loaded.info.dtype == "bfloat16" and next(loaded.model.parameters()).dtype == torch.bfloat16
    calibration = calibration_for(loaded)
    module = loaded.model.model.layers[1].mlp.down_proj
    rows = []
    with torch.inference_mode():
        for batch in calibration.batches(4, by_length=True):
            real = batch["attention_mask"].bool()
            with observing([(module, "input", lambda x, real=real: rows.append(x[real]))]):
                loaded.model.model(**batch)
    rows = torch.cat(rows)
    reference = 2 * rows.double().T @ rows.double() / rows.shape[0]  # bf16 values are exact in float64
    hessians = collect_hessians(loaded, calibration, HessianSpec(batch_size=4))
    hessian = hessians.hessian("model.layers.1.mlp.down_proj")
    assert hessian.dtype == torch.float32
    torch.testing.assert_close(hessian.double(), reference, rtol=1e-5, atol=1e-6 * float(reference.abs().max()))
    stats = collect(loaded, calibration, StatsSpec(batch_size=4))
    assert stats.summary["absmax"].gt(0).all()
    windows = evaluation_windows(loaded.tokenizer, HELD_OUT, 64, 2, "held out")
    assert evaluate(loaded, PRESETS["W4 g128 GPTQ"], Calibrated(stats=stats, hessians=hessians),
                    windows).quantized_perplexity < float("inf")


def test_the_branch_free_path_equals_the_host_branch_with_nan_and_inf():
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(50, 16, generator=generator) * (1 + i) for i in range(4)]
    batches[1][3, 2] = float("nan")
    batches[2][7, 5] = float("inf")
    batches[2][9, 5] = float("-inf")
    host, free = ActivationAccumulator(16, branch_free=False), ActivationAccumulator(16, branch_free=True)
    assert not ActivationAccumulator(16).branch_free  # on the CPU the host branch is the default
    for number, batch in enumerate(batches):
        tokens = TokenIndex(torch.full((50,), number), torch.arange(50))
        host.update(batch, tokens)
        free.update(batch, tokens)
    quantiles = torch.tensor([0.5, 0.999], dtype=torch.float64)
    first, second = host.result(quantiles), free.result(quantiles)
    for name, value in first.items():
        torch.testing.assert_close(value, second[name], rtol=1e-6, atol=1e-9, equal_nan=True, msg=name)
    assert int(first["nan"].sum()) == 1 and int(first["inf"].sum()) == 2


@pytest.mark.parametrize("act_order", ["none", "static", "dynamic"])
def test_gptq_on_stacked_and_batched_layers_equals_one_call_per_layer(act_order):
    generator = torch.Generator().manual_seed(2)
    hessians = []
    for scale in (1.0, 1e-3):  # two inputs (different Hessians, one with a dead channel), batched together
        x = scale * torch.randn(512, 64, generator=generator) @ torch.randn(64, 64, generator=generator)
        x[:, 5] = 0 if scale < 1 else x[:, 5]
        hessians.append(x.T @ x)
    groups = [[torch.randn(rows, 64, generator=generator) for rows in (32, 16, 16)] for _ in hessians]
    spec = replace(PRESETS["W4 g128 GPTQ"].weights, group_size=16, act_order=act_order)
    batched = quantize_groups(groups, spec, hessians)
    for weights, hessian, stacked in zip(groups, hessians, batched):
        for weight, (fake, _, costs) in zip(weights, stacked):
            alone = gptq(weight, hessian, spec.bits, spec.group_size, block_size=spec.block_size, act_order=act_order)
            torch.testing.assert_close(fake, alone.weight, rtol=0, atol=1e-5)
            assert costs["gptq_loss"] == pytest.approx(alone.loss, rel=1e-4)


@pytest.mark.gpu
@cuda
def test_a_model_offloaded_to_cpu_memory_runs_block_by_block_on_the_gpu():
    offloaded = load_model(ModelSpec("tiny-random-llama", device="cuda", dtype="float32", offload="cpu"))
    resident = load_model(ModelSpec("tiny-random-llama", device="cuda", dtype="float32"))
    calibration = calibration_for(resident)
    first = collect_hessians(resident, calibration, HessianSpec(batch_size=4))
    second = collect_hessians(offloaded, calibration, HessianSpec(batch_size=4))
    assert second.meta["plan"]["execution"] == "block-by-block"
    assert next(offloaded.model.parameters()).device.type == "cpu"  # every block went back
    assert relative_difference(first.hessians, second.hessians) <= 1e-5


def test_histogram_counts_without_bincount_equal_bincount():
    """The accelerator path (index_add_ into the existing histogram: no read-back of the index's
    maximum) counts exactly what bincount counts, in int32 and int64 histograms."""
    from engine.stats.accumulators import add_counts_

    index = torch.randint(0, 640, (100_000,), generator=torch.Generator().manual_seed(3), dtype=torch.int32)
    for dtype in (torch.int32, torch.int64):
        on_host, on_device = torch.full((5, 128), 7, dtype=dtype), torch.full((5, 128), 7, dtype=dtype)
        add_counts_(on_host, index, bincount=True)
        add_counts_(on_device, index, bincount=False)
        assert torch.equal(on_host, on_device) and int(on_host.sum()) == 7 * 640 + 100_000
