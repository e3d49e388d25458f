"""SmoothQuant: the scales are llm-compressor's (transcribed below from its SmoothQuantModifier), the
norm -> layers mappings are found from the model, and the smoothed float model computes what the
original does, Gemma's (1 + weight) norms included; quantized, checkpointed and reloaded, it is what
calibscope measured."""
from __future__ import annotations

import json

import pytest
import torch

from engine import ModelSpec, load_model
from engine.errors import CalibscopeError, SpecError
from engine.export import save_quantized
from engine.models import from_model
from engine.quant import (
    PRESETS,
    ActivationSpec,
    Calibrated,
    QuantSpec,
    WeightSpec,
    evaluation_windows,
    perplexity,
    quantize,
    quantized,
)
from engine.quant.apply import QuantizedModel, original_weights
from engine.quant.methods.mappings import norm_mappings
from engine.quant.methods.scaling import ChannelScaling, float_change, scaled_norm
from engine.quant.methods.smoothing import smooth, smoothing_scales
from engine.quant.plan import quantizable_layers
from engine.sampling import RandomSpec, build
from engine.stats import StatsSpec, collect
from tests.test_checkpoint import corpus, reloaded, wide_llama

DYNAMIC = PRESETS["SmoothQuant + W8A8 dynamic"]
STATIC = PRESETS["SmoothQuant + W8A8 static (min/max)"]


def llm_compressor_scales(activation_scales, balance_weights, smoothing_strength):
    """llm-compressor 0.14, SmoothQuantModifier._calculate_smoothing_scales and the floor after it."""
    weight_scales = [weight.abs().max(dim=0, keepdim=True)[0] for weight in balance_weights]
    weight_scales = 2.0 * torch.cat(weight_scales, dim=0).max(dim=0)[0]
    scales = activation_scales.pow(smoothing_strength) / weight_scales.pow(1 - smoothing_strength)
    scales = torch.where(weight_scales > 0.0, scales, activation_scales)
    return torch.maximum(scales, torch.Tensor([1e-5]))


def test_the_scales_are_llm_compressors_except_for_live_channels_the_set_never_moved():
    generator = torch.Generator().manual_seed(0)
    low, high = -torch.rand(64, generator=generator) * 5, torch.rand(64, generator=generator) * 40
    low[3] = high[3] = 0.0  # a channel the calibration set never moved
    low[5] = high[5] = 0.0  # one the norm's gain of 0 keeps at 0
    dead = torch.zeros(64, dtype=torch.bool)
    dead[5] = True
    weights = [torch.randn(48, 64, generator=generator), torch.randn(16, 64, generator=generator)]
    weights[0][:, 7] = weights[1][:, 7] = 0.0  # a column no layer uses
    for alpha in (0.5, 0.8):
        ours = smoothing_scales(low, high, weights, alpha, dead)
        theirs = llm_compressor_scales(high - low, weights, alpha)
        same = torch.ones(64, dtype=torch.bool)
        same[3] = False
        assert torch.allclose(ours[same], theirs[same], rtol=1e-6, atol=0)
        assert ours[3] == 1.0 and theirs[3] == pytest.approx(1e-5)  # theirs: the norm's gain times 10^5 there
        assert ours[5] == theirs[5] == pytest.approx(1e-5)  # a dead channel's column shrinks out of the rows' scales
        assert ours[7] == pytest.approx(float(high[7] - low[7]))


@pytest.mark.parametrize("name, attention_norm, mlp_norm, mlp_layers, offset", [
    ("tiny-random-llama", "model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm",
     ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"), 0.0),
    # Gemma 3: the MLP reads pre_feedforward_layernorm (post_attention_layernorm normalizes the attention's
    # output before the residual), and its norms multiply by (1 + weight)
    ("tiny-random-gemma3", "model.layers.0.input_layernorm", "model.layers.0.pre_feedforward_layernorm",
     ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"), 1.0),
    ("tiny-random-gpt2", "transformer.h.0.ln_1", "transformer.h.0.ln_2", ("transformer.h.0.mlp.c_fc",), 0.0),
])
def test_the_mappings_are_found_from_the_model(name, attention_norm, mlp_norm, mlp_layers, offset):
    loaded = load_model(ModelSpec(name, dtype="float32"))
    mappings = {mapping.source: mapping for mapping in norm_mappings(loaded, quantizable_layers(loaded.model, DYNAMIC))}
    assert mappings[mlp_norm].layers == mlp_layers and mappings[mlp_norm].gain_offset == offset
    assert mappings[attention_norm].gain_offset == offset and len(mappings) == 2 * loaded.model.config.num_hidden_layers
    final = "transformer.ln_f" if name.endswith("gpt2") else "model.norm"
    assert final not in mappings  # the LM head reads it and is not quantized


def statistics(loaded):
    calibration = build(corpus(), loaded.tokenizer, RandomSpec(nsamples=8, length=64, seed=0))
    return calibration, collect(loaded, calibration, StatsSpec(batch_size=4))


@pytest.mark.parametrize("name", ["tiny-random-gemma3", "tiny-random-llama", "tiny-random-gpt2"])
def test_the_smoothed_float_model_is_the_original(name):
    loaded = load_model(ModelSpec(name, dtype="float32"))
    _, stats = statistics(loaded)
    layers = quantizable_layers(loaded.model, DYNAMIC)
    matrices = original_weights(loaded, layers)
    smoothing = smooth(loaded, layers, matrices, stats.arrays, 0.5)
    assert float_change(loaded, smoothing) < 1e-5
    assert any(float(scales.max() / scales.min()) > 1.5 for scales in smoothing.scales.values())  # it did move something
    if name == "tiny-random-gemma3":  # dividing Gemma's weight itself (as for a Llama norm) changes the model
        modules = dict(loaded.model.named_modules())
        wrong = {}
        for mapping in smoothing.mappings:
            wrong.update(scaled_norm(mapping.source, modules[mapping.source], smoothing.scales[mapping.layers[0]], 0.0))
        assert float_change(loaded, ChannelScaling(smoothing.mappings, smoothing.scales, wrong)) > 0.05


def test_a_smoothed_plan_quantizes_the_smoothed_inputs():
    loaded = load_model(ModelSpec("tiny-random-llama", dtype="float32"))
    _, stats = statistics(loaded)
    plan, table = quantize(loaded, STATIC, Calibrated(stats=stats))
    assert plan.floats and set(plan.column_scales) <= set(plan.weights)
    name = "model.layers.0.self_attn.q_proj"
    scales = plan.column_scales[name]
    expected = float((stats.arrays(name)["absmax"].float() / scales).max())  # |x / s|'s max follows from the channels
    assert plan.inputs[name].scale.item() * 127 == pytest.approx(expected, rel=1e-6)
    assert table.set_index("layer").loc[name, "smoothing_max"] == pytest.approx(float(scales.max()))
    assert "smoothing_max" not in table.columns or table.set_index("layer")["smoothing_max"].isna()[
        "model.layers.0.self_attn.o_proj"]  # o_proj reads the attention, not a norm
    unsmoothed, _ = quantize(loaded, QuantSpec(STATIC.weights, STATIC.activations), Calibrated(stats=stats))
    windows = evaluation_windows(loaded.tokenizer, corpus()["text"], 64, 4, "doc")
    with quantized(loaded, plan):
        smoothed_ppl = perplexity(loaded, windows)
    with quantized(loaded, QuantizedModel(floats=plan.floats, column_scales=plan.column_scales)):
        float_smoothed = perplexity(loaded, windows)
    with quantized(loaded, unsmoothed):
        plain_ppl = perplexity(loaded, windows)
    assert torch.isfinite(torch.tensor([smoothed_ppl, plain_ppl])).all()
    assert float_smoothed == pytest.approx(perplexity(loaded, windows), rel=1e-5)  # the float model, smoothed
    one = plan.only({name})  # per-layer sensitivity: one layer quantized on the smoothed float model
    assert one.floats is plan.floats and set(one.weights) == {name}


def test_a_smoothed_checkpoint_reloads_to_the_simulated_perplexity(tmp_path):
    loaded = wide_llama()
    _, stats = statistics(loaded)
    plan, _ = quantize(loaded, STATIC, Calibrated(stats=stats))
    save_quantized(loaded, plan, STATIC, tmp_path / "out", dtype="model")  # float32: the smoothed norms to the bit
    config = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "int-quantized"
    windows = evaluation_windows(loaded.tokenizer, corpus()["text"], 64, 4, "doc")
    with quantized(loaded, plan):
        simulated = perplexity(loaded, windows)
    back = reloaded(tmp_path / "out")
    state = back.state_dict()
    for parameter, value in plan.floats.items():
        assert torch.equal(state[parameter], value), parameter  # the smoothed norms travel
    assert perplexity(from_model(back, loaded.tokenizer), windows) / simulated == pytest.approx(1.0, abs=1e-3)


def test_what_smoothquant_refuses_says_why():
    with pytest.raises(SpecError, match="min/max or dynamic"):
        QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, "percentile", 99.9), smoothing=0.5)
    with pytest.raises(SpecError, match="quantize both"):
        QuantSpec(WeightSpec("rtn", 4, 128), smoothing=0.5)
    with pytest.raises(SpecError, match="between 0 and 1"):
        QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8), smoothing=1.5)
    loaded = load_model(ModelSpec("tiny-random-llama", dtype="float32"))
    with pytest.raises(CalibscopeError, match="SmoothQuant needs activation statistics"):
        quantize(loaded, DYNAMIC)
    assert DYNAMIC.label().startswith("SmoothQuant α0.5 + W8 per-channel RTN + A8 dynamic per-token")


def test_smoothquant_before_fp8_sets_the_static_scale_of_the_smoothed_input():
    loaded = load_model(ModelSpec("tiny-random-llama", dtype="float32"))
    _, stats = statistics(loaded)
    spec = QuantSpec(PRESETS["FP8 W8A8 static"].weights, PRESETS["FP8 W8A8 static"].activations, smoothing=0.5)
    plan, _ = quantize(loaded, spec, Calibrated(stats=stats))
    name = "model.layers.1.mlp.up_proj"
    expected = float((stats.arrays(name)["absmax"].float() / plan.column_scales[name]).max()) / 448
    assert plan.inputs[name].scale.item() == pytest.approx(expected, rel=1e-6)
    windows = evaluation_windows(loaded.tokenizer, corpus()["text"], 64, 4, "doc")
    with quantized(loaded, plan):
        assert torch.isfinite(torch.tensor(perplexity(loaded, windows)))
