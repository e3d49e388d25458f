"""Simulated quantization against direct computations: GPTQ vs RTN, activation clipping, restoring
weights, perplexity, and the end-to-end evaluation on a tiny model."""
import math

import datasets
import pytest
import torch

from engine import ModelSpec, load_model
from engine.errors import CalibscopeError, SpecError
from engine.hooks import select_layers
from engine.quant import (
    ActivationSpec,
    Calibrated,
    Quantization,
    QuantizedModel,
    QuantSpec,
    WeightSpec,
    evaluate,
    evaluation_windows,
    gptq,
    perplexity,
    quantize,
    quantized,
    rtn,
)
from engine.quant.activations.ranges import activation_grid, mse_clip
from engine.quant.formats.grid import minmax_grid, row_grid
from engine.quant.measures import output_error
from engine.sampling import RandomSpec, build
from engine.stats import ActivationAccumulator, StatsSpec, TokenIndex, collect
from engine.stats.hessian_report import collect_hessians


def correlated_inputs(tokens: int, channels: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(channels, channels, generator=generator) / channels**0.5
    scales = torch.logspace(-1, 1, channels)
    return ((torch.randn(tokens, channels, generator=generator) * scales) @ mixing
            + 0.1 * torch.randn(tokens, channels, generator=generator))


def relative_output_error(weight, quantized_weight, x):
    return float(((x @ (quantized_weight - weight).T) ** 2).sum() / ((x @ weight.T) ** 2).sum())


@pytest.mark.parametrize("bits,group_size,act_order", [(4, 0, "none"), (3, 32, "none"), (4, 32, "dynamic"),
                                                       (4, 32, "static"), (2, 0, "dynamic")])
def test_gptq_beats_rtn_on_the_layer_output(bits, group_size, act_order):
    x = correlated_inputs(2048, 96)
    weight = torch.randn(64, 96, generator=torch.Generator().manual_seed(1))
    hessian = 2 * x.T @ x / x.shape[0]
    result = gptq(weight, hessian, bits, group_size, block_size=32, act_order=act_order)
    gptq_error = relative_output_error(weight, result.weight, x)
    rtn_error = relative_output_error(weight, rtn(weight, bits, group_size), x)
    assert gptq_error < 0.8 * rtn_error, (gptq_error, rtn_error)
    assert result.damping == 0.01 and result.loss > 0
    torch.testing.assert_close(output_error(result.weight - weight, weight, hessian), gptq_error, rtol=1e-3, atol=0)


def test_static_act_order_keeps_each_group_on_its_original_grid_and_dynamic_records_the_groups():
    x = correlated_inputs(1024, 64, seed=5)
    weight = torch.randn(8, 64, generator=torch.Generator().manual_seed(6))
    hessian = x.T @ x
    static = gptq(weight, hessian, 4, 16, block_size=16, act_order="static")
    for start in range(0, 64, 16):  # every value of a group lies on the grid of that group's original weights
        grid = row_grid(weight[:, start:start + 16], 4, True)
        group = static.weight[:, start:start + 16]
        torch.testing.assert_close(grid.fake_quantize(group), group)
    assert static.group_index is None
    dynamic = gptq(weight, hessian, 4, 16, block_size=16, act_order="dynamic")
    order = torch.argsort(torch.diag(hessian), descending=True)
    assert dynamic.group_index is not None and (dynamic.group_index[order] == torch.arange(64) // 16).all()


def test_gptq_lazy_blocks_equal_column_by_column_and_values_lie_on_the_grid():
    x = correlated_inputs(512, 64, seed=3)
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(4))
    hessian = x.T @ x
    lazy = gptq(weight, hessian, 4, group_size=16, block_size=16)
    eager = gptq(weight, hessian, 4, group_size=16, block_size=1)
    torch.testing.assert_close(lazy.weight, eager.weight, rtol=1e-4, atol=1e-4)
    for start in range(0, 64, 16):  # each row of each group takes at most 16 distinct values
        group = lazy.weight[:, start:start + 16]
        assert all(len(torch.unique(row)) <= 16 for row in group)


def test_gptq_handles_dead_inputs_and_raises_damping_when_needed():
    x = correlated_inputs(8, 32, seed=5)  # 8 tokens, 32 channels: rank 8
    x[:, 3] = 0
    weight = torch.randn(8, 32, generator=torch.Generator().manual_seed(6))
    result = gptq(weight, x.T @ x, 4, damping=1e-9)
    assert result.damping > 1e-9 and torch.all(result.weight[:, 3] == 0)
    assert torch.isfinite(result.weight).all()


def test_rtn_matches_a_direct_grid_per_group():
    weight = torch.randn(4, 8)
    out = rtn(weight, 3, group_size=4, symmetric=False)
    for start in (0, 4):
        part = weight[:, start:start + 4]
        low, high = part.min(1).values.clamp(max=0), part.max(1).values.clamp(min=0)
        scale = (high - low) / 7
        zero = torch.round(-low / scale)
        expected = scale[:, None] * (torch.clamp(torch.round(part / scale[:, None]) + zero[:, None], 0, 7) - zero[:, None])
        torch.testing.assert_close(out[:, start:start + 4], expected)


def statistics_of(x: torch.Tensor, quantiles: tuple[float, ...]) -> dict:
    accumulator = ActivationAccumulator(x.shape[1])
    accumulator.update(x, TokenIndex(torch.arange(x.shape[0]), torch.zeros(x.shape[0], dtype=torch.int64)))
    return accumulator.result(torch.tensor(quantiles, dtype=torch.float64))


@pytest.mark.parametrize("method,bits,gain", [("percentile", 4, 0.7), ("mse", 4, 0.5), ("mse", 8, 1.0)])
def test_clipping_beats_min_max_on_heavy_tailed_activations(method, bits, gain):
    """Laplace activations (exponential tails, as LLM activations outside outlier channels): the
    rare largest values set min/max, so every other value gets a coarse grid."""
    torch.manual_seed(0)
    x = torch.distributions.Laplace(0.0, 1.0).sample((50000, 4))
    arrays = statistics_of(x, (0.999, 0.9999))

    def error(spec):
        grid = activation_grid(arrays, spec, (99.9, 99.99))
        return float(((grid.fake_quantize(x) - x) ** 2).mean())

    minmax = error(ActivationSpec(bits, "minmax"))
    clipped = error(ActivationSpec(bits, method, percentile=99.9))
    assert clipped < gain * minmax, (clipped, minmax)


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
def test_int_weights_round_as_compressed_tensors_next_to_every_half_step(symmetric):
    """float32 weights an ulp from a half-step of their grid (x / scale = k + 0.5 - ε): calibscope's
    RTN equals compressed-tensors' fake quantization bit for bit. Rounded on unsigned codes, round(x
    / scale + 8) loses ε to the larger sum and rounds some of them up (1-2 weights a layer of SmolLM2
    rotated did)."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    from engine.quant.formats.rtn import rtn_quantized

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 256, generator=generator) * 0.02
    args = QuantizationArgs(num_bits=4, type="int", symmetric=symmetric, strategy="group", group_size=128)
    grouped = weight.unflatten(-1, (-1, 128))
    low, high = grouped.amin(-1), grouped.amax(-1)
    scale, zero = calculate_qparams(low, high, args)
    step = scale.repeat_interleave(128, dim=1)
    half_steps = (torch.floor(weight / step) + 0.5) * step
    near = torch.nextafter(half_steps, torch.zeros(()))  # an ulp towards 0 from the half-step
    low_, high_ = low.repeat_interleave(128, dim=1), high.repeat_interleave(128, dim=1)
    inside = (weight > low_) & (weight < high_) & (near > low_) & (near < high_)
    weight = torch.where(inside, near, weight)  # each group's min and max kept: the same grids
    theirs = fake_quantize(weight, scale, zero, args)
    ours, grids = rtn_quantized(weight, 4, 128, symmetric)
    assert torch.equal(grids.scale, scale)
    assert torch.equal(ours, theirs)
    signed = (grids.zero - 8).repeat_interleave(128, dim=1)
    unsigned_rounding = step * (torch.clamp(torch.round(weight / step + signed + 8), 0, 15) - signed - 8)
    assert (unsigned_rounding != theirs).sum() > 100  # the case is exercised


def token_inputs(seed: int = 0) -> torch.Tensor:
    """[2, 16, 96] inputs with outlier channels, one all-zero token and one token at ties of the grid."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 16, 96, generator=generator) * torch.logspace(-1, 1, 96)
    x[0, 3] = 0.0
    x[1, 5] = torch.arange(96) % 16 - 7.5
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("bits", [2, 3, 4, 6])
def test_dynamic_int_inputs_below_8_bits_are_compressed_tensors_own_forward(bits, dtype):
    """vLLM has no int kernel below 8 bits: transformers serves W4A4 int through compressed-tensors'
    forward, so the simulation is its dynamic per-token quantization in the model's dtype, to the bit
    (the forward hook hands the quantizer the input in float32)."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    from engine.quant import NumberFormat, TokenInputs

    x = token_inputs().to(dtype)
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="token", dynamic=True)
    scale, zero = compute_dynamic_scales_and_zp(x, args, module=torch.nn.Linear(96, 8))
    theirs = fake_quantize(x, scale, zero, args)
    assert theirs.dtype == dtype
    assert torch.equal(TokenInputs(NumberFormat.INT, bits, dtype).fake_quantize(x.float()), theirs.float())


def test_dynamic_int8_inputs_are_vllms_kernel():
    """8 bits is vLLM's dynamic int8 kernel: each token's |max| is level 127 and nothing clips."""
    from engine.quant import NumberFormat, TokenInputs

    x = token_inputs()
    maximum = x.abs().amax(-1, keepdim=True)
    step = torch.where(maximum == 0, 1.0, maximum / 127)
    out = TokenInputs(NumberFormat.INT, 8).fake_quantize(x)
    torch.testing.assert_close(out, torch.round(x / step) * step)
    torch.testing.assert_close(out.abs().amax(-1, keepdim=True), maximum)


def test_mse_clip_keeps_the_full_range_of_uniform_data_and_per_channel_percentiles_are_used():
    x = torch.rand(50000, 2) * 2 - 1
    arrays = statistics_of(x, (0.999,))
    assert mse_clip(arrays["tensor_counts"], float(arrays["absmax"].max()), 8) > 0.95
    grid = activation_grid(arrays, ActivationSpec(8, "percentile", 99.9, granularity="channel"), (99.9,))
    assert grid.scale.shape == (2,)
    with pytest.raises(SpecError, match="p99.99"):
        activation_grid(arrays, ActivationSpec(8, "percentile", 99.99, granularity="channel"), (99.9,))


def test_asymmetric_min_max_grid_covers_the_observed_range():
    grid = minmax_grid(torch.tensor(0.5), torch.tensor(3.0), 8, symmetric=False)
    values = torch.tensor([0.0, 1.0, 3.0])
    assert torch.allclose(grid.fake_quantize(values), values, atol=float(grid.scale))


def test_specs_refuse_what_cannot_be_done():
    with pytest.raises(SpecError, match="Nothing to quantize"):
        QuantSpec(WeightSpec("none"))
    with pytest.raises(SpecError, match="minmax"):
        ActivationSpec(8, "percentile", symmetric=False)
    with pytest.raises(SpecError, match="bits"):
        WeightSpec("rtn", bits=1)
    assert QuantSpec(WeightSpec("gptq", 4, 128), ActivationSpec(8, "mse")).label() == "W4 g128 GPTQ + A8 static per-tensor mse"


@pytest.fixture(scope="module")
def calibrated(tiny_llama):
    texts = [f"Paragraph {i}. " + "the quick brown fox jumps over the lazy dog " * (3 + i % 5) for i in range(24)]
    data = datasets.Dataset.from_dict({"text": texts, "source": ["q"] * 24, "row_id": list(range(24))})
    calibration = build(data, tiny_llama.tokenizer, RandomSpec(nsamples=16, length=128))
    stats = collect(tiny_llama, calibration, StatsSpec(percentiles=(99.9, 99.99)))
    hessians = collect_hessians(tiny_llama, calibration)
    evaluation = evaluation_windows(tiny_llama.tokenizer, ["held-out text about foxes and dogs. " * 40] * 3, 64, 6, "held-out")
    return stats, hessians, evaluation


def direct_perplexity(model, windows):
    total, count = 0.0, 0
    with torch.no_grad():
        for row in windows:
            logits = model(row[None]).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, row[1:], reduction="sum").item()
            count += row.numel() - 1
    return math.exp(total / count)


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gpt2"])
def test_perplexity_matches_a_direct_computation(name):
    loaded = load_model(ModelSpec(name))
    evaluation = evaluation_windows(loaded.tokenizer, ["Some held-out text, repeated. " * 30], 48, 5, "text")
    assert evaluation.windows.shape == (5, 48) and evaluation.tokens == 5 * 47
    assert torch.all(evaluation.windows[:, 0] == loaded.tokenizer("x").input_ids[0])  # each window starts with BOS
    expected = direct_perplexity(loaded.model, evaluation.windows)
    assert perplexity(loaded, evaluation, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_evaluation_windows_refuse_too_little_text(tiny_llama):
    with pytest.raises(CalibscopeError, match="fewer than one window"):
        evaluation_windows(tiny_llama.tokenizer, ["short"], 512, 4, "short")


def test_weights_and_hooks_are_restored_after_an_exception(tiny_llama, calibrated):
    stats, hessians, _ = calibrated
    layers = select_layers(tiny_llama.model, ("Linear",), "", False)
    plan, _ = quantize(tiny_llama, QuantSpec(WeightSpec("gptq", 2, 0), ActivationSpec(4, "minmax")), Calibrated(stats=stats,
                                                                                                                hessians=hessians))
    module = layers[0].module
    original = module.weight.data
    before = original.clone()
    with pytest.raises(RuntimeError, match="boom"), quantized(tiny_llama, plan):
        assert not torch.equal(module.weight.data, before) and module._forward_pre_hooks
        raise RuntimeError("boom")
    assert module.weight.data_ptr() == original.data_ptr() and torch.equal(module.weight.data, before)
    assert not any(layer.module._forward_pre_hooks for layer in layers)


def test_evaluate_on_a_tiny_model_orders_schemes_and_leaves_the_model_unchanged(tiny_llama, calibrated):
    stats, hessians, evaluation = calibrated
    state = {k: v.clone() for k, v in tiny_llama.model.state_dict().items()}
    float_ppl = perplexity(tiny_llama, evaluation)
    w8 = evaluate(tiny_llama, QuantSpec(WeightSpec("rtn", 8, 0)), Calibrated(stats=stats, hessians=hessians), evaluation)
    w2 = evaluate(tiny_llama, QuantSpec(WeightSpec("rtn", 2, 0)), Calibrated(stats=stats, hessians=hessians), evaluation)
    both = evaluate(tiny_llama, Quantization(QuantSpec(WeightSpec("gptq", 4, 32), ActivationSpec(8, "percentile", 99.99)),
                                             sensitivity="thorough"), Calibrated(stats=stats, hessians=hessians), evaluation)
    assert w8.float_perplexity == pytest.approx(float_ppl) == w2.float_perplexity
    assert abs(w8.gap) < 0.1 * w2.gap  # random weights: perplexity ~ vocabulary, yet 2 bits still shows
    assert w8.divergence.mean_kld < 0.1 * w2.divergence.mean_kld and w8.divergence.top1_agreement > w2.divergence.top1_agreement
    table = both.layers
    assert len(table) == len(select_layers(tiny_llama.model, ("Linear",), "", False))
    assert {"output_error", "gptq_loss", "input_error", "perplexity_change", "kld", "clip", "block"} <= set(table.columns)
    assert (table["output_error"] > 0).all() and table["perplexity_change"].notna().all() and (table["kld"] > 0).all()
    assert both.meta["evaluation_tokens"] == evaluation.tokens
    for name, value in tiny_llama.model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_evaluate_says_what_is_missing(tiny_llama, calibrated):
    _, _, evaluation = calibrated
    with pytest.raises(CalibscopeError, match="collect Hessians"):
        evaluate(tiny_llama, QuantSpec(WeightSpec("gptq", 4, 0)), Calibrated(), evaluation)
    with pytest.raises(CalibscopeError, match="activation statistics"):
        evaluate(tiny_llama, QuantSpec(WeightSpec("none"), ActivationSpec(8)), Calibrated(), evaluation)
    with pytest.raises(CalibscopeError, match="no layer .nope."), quantized(tiny_llama, QuantizedModel({"nope": torch.zeros(1)})):
        pass
