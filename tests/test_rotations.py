"""Rotations: Hadamard matrices of widths that are not powers of two, the rotated float model against
the original's logits (tiny Llama, tiny Gemma 3, the builtin Gemma; float32 and bfloat16), against
compressed-tensors' own transform factory, the rotated Hessians against ones collected on the rotated
model, the predicted errors against a direct computation, and "where it helps" deciding per input."""
import copy

import datasets
import numpy as np
import pytest
import torch
from compressed_tensors.transform import TransformArgs, TransformConfig, TransformScheme, apply_transform_config
from compressed_tensors.transform.utils.hadamard import deterministic_hadamard_matrix, random_hadamard_matrix

from engine import ModelSpec, load_model
from engine.errors import CalibscopeError, SpecError
from engine.quant import (
    ActivationSpec,
    Calibrated,
    Granularity,
    QuantSpec,
    RotationSpec,
    WeightMethod,
    WeightSpec,
    hadamard,
    has_hadamard,
    has_random_hadamard,
    layer_rotations,
    quantizable_layers,
    quantize,
    quantized,
    random_hadamard,
)
from engine.quant.apply import original_weights
from engine.quant.methods.mappings import tolerance
from engine.sampling import RandomSpec, build
from engine.stats import HessianSpec, collect_hessians

TEXTS = [f"Note {i}: the quick brown fox jumps over {i} lazy dogs; the river runs to the sea. " * (1 + i % 3)
         for i in range(12)]
W4A4 = QuantSpec(WeightSpec(WeightMethod.RTN, 4, 32), ActivationSpec(4, granularity=Granularity.TOKEN))


def calibration_set(loaded, samples=4, length=64):
    corpus = datasets.Dataset.from_dict({"text": TEXTS, "source": ["test"] * len(TEXTS)})
    return build(corpus, loaded.tokenizer, RandomSpec(nsamples=samples, length=length, seed=1))


@pytest.mark.parametrize("order", [2, 4, 12, 20, 28, 36, 40, 52, 172, 576, 640, 1152, 1536, 2560])
def test_a_hadamard_matrix_of_every_order_that_has_one(order):
    matrix = hadamard(order)
    assert set(matrix.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(matrix @ matrix.T, order * torch.eye(order, dtype=torch.float64))


def test_powers_of_two_are_sylvesters_as_compressed_tensors_builds_them():
    for order in (1, 2, 64, 256):
        assert torch.equal(hadamard(order), deterministic_hadamard_matrix(order, torch.float64))


def test_an_order_without_a_hadamard_matrix_is_refused_saying_what_to_do():
    assert not has_hadamard(6) and not has_hadamard(100 * 3 + 2)
    with pytest.raises(CalibscopeError, match="blocks"):
        hadamard(6)


def test_orders_only_paley_reaches_have_no_random_hadamard_and_are_told_apart_without_building():
    assert has_hadamard(924) and not has_random_hadamard(924)  # Paley II of 461; compressed-tensors knows none
    matrix = hadamard(924)
    assert torch.equal(matrix @ matrix.T, 924 * torch.eye(924, dtype=torch.float64))
    assert has_random_hadamard(640) and has_random_hadamard(14336) and not has_random_hadamard(6)


def test_the_probe_takes_the_longest_sequences_at_one_length():
    from types import SimpleNamespace

    from engine.quant.methods.rotation import probe_batch

    def lengths(*sizes):
        return probe_batch(SimpleNamespace(sequences=[np.arange(size) for size in sizes])).shape

    assert lengths(256, 256, 256) == (2, 256)  # two windows
    assert lengths(8, 300, 64) == (1, 300)  # one long document, not three cut to 8 tokens
    assert lengths(2048) == (1, 512) and lengths(100, 90, 80, 70, 60, 50, 40) == (5, 60)


def test_the_random_hadamard_is_compressed_tensors_own_for_the_same_generator():
    ours, theirs = torch.Generator(), torch.Generator()
    ours.manual_seed(5)
    theirs.manual_seed(5)
    assert torch.equal(random_hadamard(640, ours), random_hadamard_matrix(640, torch.float64, gen=theirs))


EVERY_LAYER = RotationSpec()


def rotated_plan(loaded, spec=EVERY_LAYER):
    layers = quantizable_layers(loaded.model, W4A4)
    rotations = layer_rotations(loaded, layers, spec)
    return rotations, rotations.plan(layers, original_weights(loaded, layers))


def logits(loaded, tokens, plan=None):
    with torch.inference_mode():
        if plan is None:
            return loaded.model(input_ids=tokens).logits.float()
        with quantized(loaded, plan):
            return loaded.model(input_ids=tokens).logits.float()


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gemma3", "builtin:gemma-3-270m"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rotation", [RotationSpec(), RotationSpec(matrix="hadamard", block=16)])
def test_the_rotated_float_model_computes_the_original_logits(name, dtype, rotation):
    loaded = load_model(ModelSpec(name, dtype=dtype))
    tokens = torch.arange(3, 40).view(1, -1) % loaded.model.config.vocab_size
    _, plan = rotated_plan(loaded, rotation)
    assert plan.rotations and set(plan.rotations) == set(plan.weights)
    before, after = logits(loaded, tokens), logits(loaded, tokens, plan)
    change = float((after - before).norm() / before.norm())
    assert change <= tolerance(loaded), change
    assert torch.equal(logits(loaded, tokens), before)  # the shared model is left as it was
    name = next(iter(plan.rotations))
    alone = plan.only({name})  # per-layer sensitivity: that layer rotated with its weight, the rest as they are
    assert set(alone.rotations) == {name} == set(alone.weights)
    assert float((logits(loaded, tokens, alone) - before).norm() / before.norm()) <= tolerance(loaded)
    plan.drop([name])
    assert name not in plan.rotations


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gemma3"])
def test_the_rotation_is_compressed_tensors_quip_transform(name):
    """llm-compressor's QuIP "v" scheme applied by compressed-tensors' own factory to a copy of the
    model: the same matrices from the same seed, and the same logits as calibscope's rotated plan."""
    loaded = load_model(ModelSpec(name, dtype="float32"))
    tokens = torch.arange(3, 30).view(1, -1) % loaded.model.config.vocab_size
    rotations, plan = rotated_plan(loaded, RotationSpec(seed=7))
    ignore = ["lm_head", *(["re:.*down_proj"] if name == "tiny-random-llama" else [])]  # 37 wide: no Hadamard
    scheme = TransformScheme(type="random-hadamard", apply=[
        TransformArgs(targets=["Linear"], location="input", ignore=ignore),
        TransformArgs(targets=["Linear"], location="weight_input", inverse=True, ignore=ignore)])
    theirs = copy.deepcopy(loaded.model)
    import compressed_tensors.transform.factory.base as factory_base
    original = factory_base.TransformFactory.__init__

    def seeded(self, name, scheme, seed=None):
        original(self, name, scheme, 7)

    factory_base.TransformFactory.__init__ = seeded
    try:
        apply_transform_config(theirs, TransformConfig(config_groups={"v": scheme}))
    finally:
        factory_base.TransformFactory.__init__ = original
    modules = dict(theirs.named_modules())
    for layer in rotations.widths:
        assert torch.equal(modules[f"{layer}.v_input"].weight.double(), rotations.matrices[rotations.widths[layer]])
    with torch.inference_mode():
        expected = theirs(input_ids=tokens).logits.float()
    torch.testing.assert_close(logits(loaded, tokens, plan), expected, rtol=1e-4, atol=1e-4)


def test_rotated_hessians_are_those_collected_on_the_rotated_model():
    loaded = load_model(ModelSpec("tiny-random-llama", dtype="float32"))
    calibration = calibration_set(loaded)
    rotations, plan = rotated_plan(loaded)
    report = collect_hessians(loaded, calibration, HessianSpec())
    with quantized(loaded, plan):
        direct = collect_hessians(loaded, calibration, HessianSpec())
    seen = rotations.hessians(report)
    for layer in rotations.widths:
        torch.testing.assert_close(seen.hessian(layer), direct.hessian(layer), rtol=1e-4, atol=1e-5)


def test_the_predicted_errors_are_the_layers_quantized_outputs_on_the_probe(tiny_llama):
    """Each row's errors against a direct computation: the layer's input captured on the set's first
    tokens, quantized unrotated and rotated with the scheme's per-token inputs and RTN weights."""
    from engine.quant.methods.matrices import quantize_groups
    from engine.quant.methods.rotation import PROBE_TOKENS, probe_batch

    calibration = calibration_set(tiny_llama)
    plan, table = quantize(tiny_llama, QuantSpec(W4A4.weights, W4A4.activations, rotation=RotationSpec()),
                           Calibrated(calibration))
    layer = next(layer for layer in quantizable_layers(tiny_llama.model, W4A4) if layer.name.endswith("o_proj"))
    captured = []
    handle = layer.module.register_forward_pre_hook(lambda _m, args: captured.append(args[0].reshape(-1, layer.in_features)))
    try:
        with torch.inference_mode():
            tiny_llama.model(input_ids=probe_batch(calibration))
    finally:
        handle.remove()
    x, weight = torch.cat(captured).float(), layer.module.weight.detach().float()
    assert len(x) == min(PROBE_TOKENS, int(calibration.lengths.sum()))  # 4 samples of 64 tokens: all of them
    rotations = layer_rotations(tiny_llama, [layer], RotationSpec())
    hadamard, root = rotations.matrix(layer.name), layer.in_features ** 0.5  # whole input: one block
    quantizer = plan.inputs[layer.name]

    def error(inputs, w):
        fake = quantize_groups([[w]], W4A4.weights, [None])[0][0][0]
        return float((quantizer.fake_quantize(inputs) @ fake.T - x @ weight.T).pow(2).sum() / (x @ weight.T).pow(2).sum())

    row = table.set_index("layer").loc[layer.name]
    assert row["error_unrotated"] == pytest.approx(error(x, weight), rel=1e-4)
    # as compressed-tensors computes them: x H / √b in float32 at inference, W H / √b fused in float64
    turned, fused = (x @ hadamard.float()) / root, ((weight.double() @ hadamard.double()) / root).float()
    assert row["error_rotated"] == pytest.approx(error(turned, fused), rel=1e-4)


def test_where_it_helps_rotates_whole_inputs_whose_predicted_error_falls(tiny_llama):
    calibration = calibration_set(tiny_llama)
    plan, table = quantize(tiny_llama, QuantSpec(W4A4.weights, W4A4.activations,
                                                 rotation=RotationSpec(placement="where it helps")), Calibrated(calibration))
    rows = table.set_index("layer")
    for block in range(tiny_llama.model.config.num_hidden_layers):
        prefix = f"model.layers.{block}"
        for group in (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["mlp.gate_proj", "mlp.up_proj"],
                      ["self_attn.o_proj"]):
            members = rows.loc[[f"{prefix}.{name}" for name in group]]
            assert members["rotated"].nunique() == 1  # one input, one rotation (vLLM fuses the layers)
            helps = members["error_rotated"].sum() < members["error_unrotated"].sum()
            assert bool(members["rotated"].iloc[0]) == helps
            assert all((f"{prefix}.{name}" in plan.rotations) == helps for name in group)
        assert f"{prefix}.mlp.down_proj" not in plan.rotations  # 37 wide: no Hadamard matrix, left unrotated
    for column in ("absmax_before", "absmax_after", "crest_before", "crest_after", "top_share_before", "top_share_after"):
        assert rows.drop(index=[name for name in rows.index if name.endswith("down_proj")])[column].notna().all()


def test_a_rotation_spreads_an_outlier_channel_over_the_input(tiny_llama):
    """One channel of the embedding made 50x larger: its layers' largest channel over the median falls."""
    from engine.models import from_model

    loaded = from_model(copy.deepcopy(tiny_llama.model), tiny_llama.tokenizer)  # the shared model stays as it is
    with torch.no_grad():
        loaded.model.model.embed_tokens.weight[:, 3] *= 50
    _, table = quantize(loaded, QuantSpec(W4A4.weights, W4A4.activations, rotation=RotationSpec()),
                        Calibrated(calibration_set(loaded)))
    first = table.set_index("layer").loc["model.layers.0.self_attn.q_proj"]
    assert first["channel_ratio_before"] > 2.5 * first["channel_ratio_after"]
    assert first["error_rotated"] < first["error_unrotated"]


def test_rotations_refuse_what_they_do_not_combine_with():
    with pytest.raises(SpecError, match="choose one"):
        QuantSpec(WeightSpec(WeightMethod.RTN, 8, 0), ActivationSpec(8), smoothing=0.5, rotation=RotationSpec())
    with pytest.raises(SpecError, match="block"):
        RotationSpec(block=6)
    spec = QuantSpec(W4A4.weights, W4A4.activations, rotation={"matrix": "hadamard", "block": 32})
    assert spec.rotation == RotationSpec(matrix="hadamard", block=32)
    assert spec.label().startswith("Hadamard rotation in blocks of 32 + ")
    assert spec.own_pass == "The rotation" and not spec.can_run_sequentially


def test_a_layer_without_a_hadamard_is_left_unrotated_and_none_left_is_refused(tiny_llama):
    layers = quantizable_layers(tiny_llama.model, W4A4)
    kept = layer_rotations(tiny_llama, layers, RotationSpec())
    assert set(kept.widths) == {layer.name for layer in layers if layer.in_features != 37}
    with pytest.raises(CalibscopeError, match="no random Hadamard matrix in blocks of 12"):
        layer_rotations(tiny_llama, layers, RotationSpec(block=12))  # 32 and 37 channels: neither splits into 12s


def reloads_as_simulated(loaded, plan, folder):
    """The checkpoint in ``folder`` reloaded (its stored rotations attached as vLLM applies them) at
    ``plan``'s simulated perplexity; the evaluation windows and that perplexity."""
    from engine.export.verify import reloaded_divergence
    from engine.quant import perplexity
    from tests.test_checkpoint import windows

    evaluation = windows(loaded)
    with quantized(loaded, plan):
        simulated = perplexity(loaded, evaluation)
    checked, how = reloaded_divergence(folder, loaded, evaluation)
    assert checked.perplexity / simulated == pytest.approx(1.0, abs=1e-3)
    assert f"its {len(plan.rotations)} stored input rotations attached" in how
    return evaluation, simulated


@pytest.mark.parametrize("scheme", ["NVFP4 W4A4", "W4 g128 RTN"])
def test_a_rotated_checkpoint_reloads_at_the_simulated_perplexity_with_its_stored_rotations(scheme, tmp_path):
    """transformers loads the weights (rotated) and drops the transforms; the check attaches the stored
    ones as vLLM applies them: the simulated perplexity. Without them the model is another model."""
    from engine.export import save_quantized
    from engine.export.verify import reloaded
    from engine.quant import PRESETS, perplexity
    from engine.stats import collect
    from tests.test_checkpoint import corpus, wide_llama

    loaded = wide_llama(torch.bfloat16)
    calibration = build(corpus(), loaded.tokenizer, RandomSpec(nsamples=8, length=96, seed=0))
    spec = QuantSpec(PRESETS[scheme].weights, PRESETS[scheme].activations, rotation=RotationSpec())
    plan, _ = quantize(loaded, spec, Calibrated(calibration, stats=collect(loaded, calibration)))
    save_quantized(loaded, plan, spec, tmp_path / "out")
    evaluation, simulated = reloads_as_simulated(loaded, plan, tmp_path / "out")
    from engine.models import from_model

    bare = from_model(reloaded(tmp_path / "out", torch.bfloat16), loaded.tokenizer)
    assert abs(perplexity(bare, evaluation) / simulated - 1) > 0.01  # what transformers alone computes
