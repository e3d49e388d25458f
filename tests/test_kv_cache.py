"""The KV cache: its statistics against keys and values computed by hand in float64 from each
layer's projections, key norm and rotary embedding (grouped-query models, padded batches against one
sequence at a time), its FP8 simulation against compressed-tensors' own, and its scales."""
import copy
import dataclasses
import json

import datasets
import pytest
import torch

from engine import ModelSpec, load_model
from engine.errors import SpecError
from engine.hooks import cached_attention
from engine.quant import QuantSpec, WeightSpec, quantize, quantized
from engine.quant.request import Calibrated
from engine.quant.specs import KVCacheSpec
from engine.sampling import RandomSpec, build
from engine.stats.kv_cache import POSITION_EDGES, collect_kv, position_buckets

TEXTS = [f"Document {i}: the quick brown fox jumps over {i} lazy dogs while the river runs. " * (1 + i % 4) for i in range(16)]


def calibration_set(loaded, samples=7, length=512):
    corpus = datasets.Dataset.from_dict({"text": TEXTS, "source": ["test"] * len(TEXTS)})
    return build(corpus, loaded.tokenizer, RandomSpec(nsamples=samples, length=length, seed=3))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


def rms_norm(x, module):
    """Llama's (weight) or Gemma's (1 + weight) RMSNorm, in float64."""
    weight = module.weight.double()
    gain = 1.0 + weight if type(module).__name__.startswith("Gemma") else weight
    eps = getattr(module, "eps", None) or module.variance_epsilon
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def hand_made_kv(loaded, sequence):
    """Per attention module: (keys, values) [kv heads, tokens, head dim] of one unpadded sequence, in
    float64 from the module's input, its projections, key norm and the cos / sin the model hands it."""
    modules = cached_attention(loaded.model)
    inputs = {}

    def grab(name):
        def hook(_module, args, kwargs):
            inputs[name] = (kwargs.get("hidden_states", args[0] if args else None), kwargs["position_embeddings"])
        return hook

    handles = [module.register_forward_pre_hook(grab(name), with_kwargs=True) for name, module in modules.items()]
    try:
        with torch.no_grad():
            loaded.model(input_ids=torch.tensor([sequence]), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    found = {}
    for name, module in modules.items():
        hidden, (cos, sin) = inputs[name]
        x = hidden.double()[0]
        heads, width = module.config.num_key_value_heads, module.head_dim
        keys = (x @ module.k_proj.weight.double().T).view(-1, heads, width)
        values = (x @ module.v_proj.weight.double().T).view(-1, heads, width)
        if getattr(module, "k_norm", None) is not None:
            keys = rms_norm(keys, module.k_norm)
        cos, sin = cos.double()[0][:, None, :], sin.double()[0][:, None, :]
        keys = keys * cos + rotate_half(keys) * sin
        found[name] = (keys.transpose(0, 1), values.transpose(0, 1))
    return found


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gemma3"])
def test_statistics_match_keys_and_values_made_by_hand(name):
    loaded = load_model(ModelSpec(name, dtype="float32"))
    calibration = calibration_set(loaded)
    assert len(set(calibration.lengths.tolist())) > 1  # padded batches
    report = collect_kv(loaded, calibration, batch_size=3)
    by_hand = [hand_made_kv(loaded, sequence.tolist()) for sequence in calibration.sequences]
    assert list(report.layers) == list(cached_attention(loaded.model))
    for layer, tensors in report.layers.items():
        for index, tensor in enumerate(("key", "value")):
            made = [found[layer][index] for found in by_hand]
            stats = tensors[tensor]
            heads = made[0].shape[0]
            assert stats.absmax.shape == (heads,) and heads == loaded.model.config.num_key_value_heads
            absmax = torch.stack([m.abs().amax((1, 2)) for m in made]).amax(0)
            torch.testing.assert_close(stats.absmax.double(), absmax, rtol=1e-5, atol=1e-7)
            for bucket in range(len(POSITION_EDGES)):
                parts = [m[:, position_buckets(torch.arange(m.shape[1])) == bucket] for m in made]
                parts = [p for p in parts if p.shape[1]]
                tokens = sum(p.shape[1] for p in parts)
                assert int(stats.bucket_tokens[bucket]) == tokens
                if tokens:
                    expected = torch.stack([p.abs().amax((1, 2)) for p in parts]).amax(0)
                    torch.testing.assert_close(stats.bucket_absmax[bucket].double(), expected, rtol=1e-5, atol=1e-7)
                else:
                    assert float(stats.bucket_absmax[bucket].max()) == 0.0
            width = made[0].shape[2]
            assert stats.counts.sum(1).tolist() == [int(calibration.lengths.sum()) * width] * heads
            median = stats.percentile(0.5, per_head=False)
            everything = torch.cat([m.abs().reshape(-1) for m in made])
            assert float(median[0]) == pytest.approx(float(everything.median()), rel=0.04)


def test_the_builtin_gemma_caches_one_head_of_normed_rotated_keys(gemma):
    calibration = calibration_set(gemma, samples=2, length=24)
    report = collect_kv(gemma, calibration, batch_size=2)
    by_hand = [hand_made_kv(gemma, sequence.tolist()) for sequence in calibration.sequences]
    assert len(report.layers) == gemma.model.config.num_hidden_layers and report.meta["kv_heads"] == 1
    for layer in list(report.layers)[:3]:
        for index, tensor in enumerate(("key", "value")):
            expected = torch.stack([found[layer][index].abs().amax((1, 2)) for found in by_hand]).amax(0)
            torch.testing.assert_close(report.layers[layer][tensor].absmax.double(), expected, rtol=2e-2, atol=1e-3)


def compressed_tensors_copy(loaded, strategy, scales):
    """A copy of the model with compressed-tensors' own KV cache scheme applied and ``scales`` loaded."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, apply_quantization_config

    model = copy.deepcopy(loaded.model)
    scheme = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy=strategy, dynamic=False)
    apply_quantization_config(model, QuantizationConfig(config_groups={}, kv_cache_scheme=scheme))
    modules = dict(model.named_modules())
    for name, scale in scales.items():
        modules[name].k_scale.data.copy_(scale.keys)
        modules[name].v_scale.data.copy_(scale.values)
    return model


@pytest.mark.parametrize("strategy", ["tensor", "attn_head"])
@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gemma3"])
def test_fp8_kv_cache_equals_compressed_tensors_bit_for_bit(name, strategy):
    loaded = load_model(ModelSpec(name, dtype="bfloat16"))
    calibration = calibration_set(loaded)
    plan, table = quantize(loaded, QuantSpec(WeightSpec("none"), kv_cache=KVCacheSpec(strategy, "minmax")),
                           Calibrated(calibration))
    heads = loaded.model.config.num_key_value_heads
    shape = (heads, 1, 1) if strategy == "attn_head" else (1,)
    assert all(s.keys.shape == shape and s.keys.dtype == torch.bfloat16 for s in plan.kv_cache.values())
    assert len(table[table["kind"] == "kv cache"]) == 2 * len(plan.kv_cache)
    reference = compressed_tensors_copy(loaded, strategy, plan.kv_cache)
    ids = torch.tensor([calibration.sequences[0].tolist()])
    with torch.no_grad():
        float_logits = loaded.model(input_ids=ids).logits
        with quantized(loaded, plan):
            ours = loaded.model(input_ids=ids).logits
        theirs = reference(input_ids=ids).logits
    assert not torch.equal(ours, float_logits)  # the cache is rounded
    assert torch.equal(ours, theirs)


def test_scales_are_the_range_over_448_in_the_model_dtype(tiny_llama):
    calibration = calibration_set(tiny_llama)
    report = collect_kv(tiny_llama, calibration)
    plan, _ = quantize(tiny_llama, QuantSpec(WeightSpec("none"), kv_cache=KVCacheSpec("attn_head", "minmax")),
                       Calibrated(calibration))
    for name, scales in plan.kv_cache.items():
        assert torch.equal(scales.keys.reshape(-1), report.layers[name]["key"].absmax / 448.0)
    constant, _ = quantize(tiny_llama, QuantSpec(WeightSpec("none"), kv_cache=KVCacheSpec(range_method="constant")),
                           Calibrated())
    assert all(float(s.keys) == 1.0 and float(s.values) == 1.0 for s in constant.kv_cache.values())
    per_head, _ = quantize(tiny_llama, QuantSpec(WeightSpec("none"), kv_cache=KVCacheSpec("attn_head", "constant")), Calibrated())
    assert all(s.keys.shape == (2, 1, 1) for s in per_head.kv_cache.values())  # what compressed-tensors registers
    mse, _ = quantize(tiny_llama, QuantSpec(WeightSpec("none"), kv_cache=KVCacheSpec("tensor", "mse")), Calibrated(calibration))
    for name, scales in mse.kv_cache.items():  # a clip, never beyond the |max|
        assert 0 < float(scales.keys) <= float(report.layers[name]["key"].absmax.max()) / 448.0 * (1 + 1e-6)


def test_kv_cache_specs_say_what_is_wrong():
    with pytest.raises(SpecError, match="strategy"):
        KVCacheSpec("per-channel")
    with pytest.raises(SpecError, match="range_method"):
        KVCacheSpec(range_method="headroom")
    assert QuantSpec(WeightSpec("none"), kv_cache={"strategy": "attn_head"}).label() == "KV FP8 per-head minmax"
    with pytest.raises(SpecError, match="sequential"):
        from engine.quant.request import Quantization
        Quantization(QuantSpec(WeightSpec("gptq", 4, 128), kv_cache=KVCacheSpec()), sequential=True)


@pytest.mark.parametrize("strategy", ["tensor", "attn_head"])
def test_an_fp8_checkpoint_with_an_fp8_kv_cache_reloads_at_the_simulated_perplexity(strategy, tmp_path):
    from dataclasses import replace

    from safetensors import safe_open

    from engine.export import save_quantized
    from engine.export.verify import reloaded_divergence
    from engine.quant import PRESETS, evaluate
    from engine.stats import StatsSpec, collect
    from tests.test_checkpoint import corpus, wide_llama, windows

    loaded = wide_llama()
    calibration = build(corpus(), loaded.tokenizer, RandomSpec(nsamples=8, length=96, seed=0))
    calibrated = Calibrated(calibration, stats=collect(loaded, calibration, StatsSpec(batch_size=4)))
    evaluation = windows(loaded)
    weights_only = evaluate(loaded, PRESETS["FP8 W8A8 static"], calibrated, evaluation)
    spec = replace(PRESETS["FP8 W8A8 static"], kv_cache=KVCacheSpec(strategy))
    folder = tmp_path / "out"
    report = evaluate(loaded, spec, calibrated, evaluation, on_plan=lambda plan: save_quantized(loaded, plan, spec, folder,
                                                                                                 dtype="model"))
    assert report.quantized_perplexity != weights_only.quantized_perplexity
    settings = json.loads((folder / "config.json").read_text())["quantization_config"]
    scheme = settings["kv_cache_scheme"]
    assert (scheme["num_bits"], scheme["type"], scheme["symmetric"], scheme["dynamic"], scheme["strategy"]) == \
        (8, "float", True, False, strategy)
    shape = (2, 1, 1) if strategy == "attn_head" else (1,)
    with safe_open(folder / "model.safetensors", "pt") as opened:
        for block in range(2):
            for tensor in ("k_scale", "v_scale"):
                assert tuple(opened.get_tensor(f"model.layers.{block}.self_attn.{tensor}").shape) == shape
    checked, how = reloaded_divergence(folder, loaded, evaluation)
    assert how == "transformers from_pretrained"
    assert checked.perplexity / report.quantized_perplexity == pytest.approx(1.0, abs=1e-6)
    kv_effect = abs(checked.perplexity - weights_only.quantized_perplexity)
    assert kv_effect > 100 * abs(checked.perplexity - report.quantized_perplexity)


def test_eager_and_sdpa_attention_hand_the_cache_the_same_keys_and_values():
    loaded = load_model(ModelSpec("tiny-random-gemma3", dtype="float32"))
    calibration = calibration_set(loaded, samples=3)
    found = {}
    for implementation in ("eager", "sdpa"):
        loaded.model.set_attn_implementation(implementation)
        found[implementation] = collect_kv(loaded, calibration, batch_size=2)
    for block, (name, tensors) in enumerate(found["eager"].layers.items()):
        for tensor, stats in tensors.items():
            other = found["sdpa"].layers[name][tensor]
            if block == 0:  # the first layer's cache is made before any attention ran: the same bits
                assert torch.equal(stats.absmax, other.absmax) and torch.equal(stats.counts, other.counts)
            else:  # the later ones from attention outputs that eager and sdpa round differently
                torch.testing.assert_close(stats.absmax, other.absmax, rtol=1e-4, atol=1e-6)


def test_left_padding_caches_what_right_padding_does(tiny_llama):
    calibration = calibration_set(tiny_llama)
    right = collect_kv(tiny_llama, calibration, batch_size=4)
    left = collect_kv(tiny_llama, dataclasses.replace(calibration, padding_side="left"), batch_size=4)
    for name, tensors in right.layers.items():
        for tensor, stats in tensors.items():
            other = left.layers[name][tensor]
            assert torch.equal(stats.bucket_tokens, other.bucket_tokens)
            torch.testing.assert_close(stats.bucket_absmax, other.bucket_absmax, rtol=1e-4, atol=1e-6)


def test_a_model_without_a_kv_cache_is_refused_with_a_reason():
    from engine.errors import CalibscopeError

    gpt2 = load_model(ModelSpec("tiny-random-gpt2", dtype="float32"))
    with pytest.raises(CalibscopeError, match="KV cache"):
        quantize(gpt2, QuantSpec(WeightSpec("none"), kv_cache=KVCacheSpec(range_method="constant")), Calibrated())
