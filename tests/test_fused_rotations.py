"""SpinQuant's fused rotations (R1 on the residual stream, R2 per value head): the turned float model
computes the original's logits, layouts where that cannot hold are refused with the reason, the
scheme planned on the turned model is the scheme planned on that model loaded as its own, and its
checkpoint (the LM head untied) reloads at the simulated perplexity."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig

from engine import ModelSpec, load_model
from engine.errors import CalibscopeError, SpecError
from engine.models import from_model
from engine.quant import (
    PRESETS,
    Calibrated,
    QuantSpec,
    RotationSpec,
    fuse_rotations,
    quantizable_layers,
    quantize,
)
from engine.quant.methods.mappings import is_norm, tolerance
from engine.quant.plan import plan_quantization
from engine.sampling import RandomSpec, build
from engine.stats import HessianSpec, collect, collect_hessians
from tests.test_checkpoint import corpus, wide_llama
from tests.test_rotations import logits, reloads_as_simulated

SPIN = RotationSpec(placement="none", residual=True, heads=True)  # llm-compressor's SpinQuantModifier default: R1, R2
HEADS = RotationSpec(placement="none", heads=True)


def with_gains(loaded, seed=0):
    """Random norm gains (a built model's are all 1, or 0 under Gemma's 1 + w): folding them is tested."""
    generator = torch.Generator().manual_seed(seed)
    for module in loaded.model.modules():
        if is_norm(module):
            module.weight.data = (torch.rand(module.weight.shape, generator=generator) + 0.5).to(module.weight.dtype)
    return loaded


def relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("rotation", [SPIN, HEADS, RotationSpec(placement="none", residual=True, matrix="hadamard", block=64)])
def test_a_llama_turned_by_fused_rotations_computes_its_logits(dtype, tied, rotation):
    loaded = with_gains(wide_llama(dtype, tied=tied))
    tokens = torch.arange(5, 90).view(1, -1) % loaded.model.config.vocab_size
    before = logits(loaded, tokens)
    fused = fuse_rotations(loaded, rotation)
    assert relative(logits(loaded, tokens, fused.plan()), before) <= tolerance(loaded)
    assert fused.untied == (tied and rotation.residual)
    if rotation.residual:  # the norms' gains were folded (1 each), the embeddings and every block turned
        norms = [name for name, module in loaded.model.named_modules() if is_norm(module)]
        assert all(torch.all(fused.floats[f"{name}.weight"] == 1) for name in norms)
        assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(fused.floats)
        assert fused.residual == (rotation.block or 256)
    else:
        assert set(fused.floats) == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in range(2) for p in "vo"}
    assert fused.heads == (64 if rotation.heads else None)
    # the shared model is left as it was, its head still tied
    assert torch.equal(logits(loaded, tokens), before)
    assert (loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight) == tied


def test_biases_turn_with_their_outputs():
    """Every projection with a bias (Qwen 2's q/k/v, here o_proj too): o_proj's bias joins the stream
    (b R1), v_proj's the value heads (b R2); q/k/v's read the turned stream and stay."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.models import byte_tokenizer

    tokenizer = byte_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            parameter.data.normal_(0, 0.5)
    loaded = with_gains(from_model(model, tokenizer, "biased-llama"))
    tokens = torch.arange(5, 90).view(1, -1) % config.vocab_size
    fused = fuse_rotations(loaded, SPIN)
    assert {"model.layers.0.self_attn.o_proj.bias", "model.layers.0.mlp.down_proj.bias",
            "model.layers.0.self_attn.v_proj.bias"} <= set(fused.floats)
    assert "model.layers.0.self_attn.q_proj.bias" not in fused.floats
    assert relative(logits(loaded, tokens, fused.plan()), logits(loaded, tokens)) <= tolerance(loaded)


def test_the_turned_weights_are_the_rotations_written_out():
    """R1: W diag(g) R1 for a reader, R1ᵀ W for a writer, E R1; R2 per value head on v_proj's rows and
    o_proj's columns; checked against dense matrices built from the same draw."""
    from engine.quant import random_hadamard

    loaded = with_gains(wide_llama(torch.float32))
    fused = fuse_rotations(loaded, RotationSpec(placement="none", residual=True, heads=True, seed=3))
    generator = torch.Generator().manual_seed(3)  # one generator: R1's draw, then R2's
    r1 = random_hadamard(256, generator).double() / 16
    r2 = random_hadamard(64, generator).double() / 8
    model = loaded.model
    gain = model.model.layers[0].input_layernorm.weight.double()
    q = model.model.layers[0].self_attn.q_proj.weight.double()
    torch.testing.assert_close(fused.floats["model.layers.0.self_attn.q_proj.weight"].double(), q * gain @ r1,
                               rtol=0, atol=1e-6)
    down = model.model.layers[1].mlp.down_proj.weight.double()
    torch.testing.assert_close(fused.floats["model.layers.1.mlp.down_proj.weight"].double(), r1.T @ down, rtol=0, atol=1e-6)
    embed = model.model.embed_tokens.weight.double()
    torch.testing.assert_close(fused.floats["model.embed_tokens.weight"].double(), embed @ r1, rtol=0, atol=1e-6)
    value = model.model.layers[0].self_attn.v_proj.weight.double()  # 2 KV heads of 64
    torch.testing.assert_close(fused.floats["model.layers.0.self_attn.v_proj.weight"].double(),
                               torch.block_diag(*[r2] * 2).T @ (value * gain @ r1), rtol=0, atol=1e-6)
    output = model.model.layers[0].self_attn.o_proj.weight.double()  # 4 query heads of 64
    torch.testing.assert_close(fused.floats["model.layers.0.self_attn.o_proj.weight"].double(),
                               r1.T @ output @ torch.block_diag(*[r2] * 4), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny-random-gemma3", "builtin:gemma-3-270m"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gemma3_turns_its_heads_exactly_and_refuses_the_residual_stream_saying_why(name, dtype):
    loaded = with_gains(load_model(ModelSpec(name, dtype=dtype)))
    tokens = torch.arange(5, 60).view(1, -1) % loaded.model.config.get_text_config().vocab_size
    fused = fuse_rotations(loaded, HEADS)
    assert relative(logits(loaded, tokens, fused.plan()), logits(loaded, tokens)) <= tolerance(loaded)
    assert fused.heads == loaded.model.model.layers[0].self_attn.head_dim
    with pytest.raises(CalibscopeError, match=r"post_attention_layernorm normalizes .*o_proj's output .* Rotate the heads"):
        fuse_rotations(loaded, SPIN)


def test_fused_rotations_refuse_what_they_cannot_turn():
    with pytest.raises(SpecError, match="rotates nothing"):
        RotationSpec(placement="none")
    gpt2 = load_model(ModelSpec("tiny-random-gpt2"))
    with pytest.raises(CalibscopeError, match="separate value and output projections"):
        fuse_rotations(gpt2, HEADS)
    with pytest.raises(CalibscopeError):
        fuse_rotations(gpt2, SPIN)
    moe = load_model(ModelSpec("tiny-random-qwen3-moe"))
    with pytest.raises(CalibscopeError, match="MoE model would turn every expert"):
        fuse_rotations(moe, SPIN)
    llama = wide_llama()
    with pytest.raises(CalibscopeError, match="has 256 channels, which have no random-hadamard matrix in blocks of 96"):
        fuse_rotations(llama, RotationSpec(placement="none", residual=True, block=96))
    assert SPIN.label() == "R1+R2 fused random Hadamard rotation"
    assert RotationSpec(residual=True).label() == "R1 fused + random Hadamard rotation"


@pytest.mark.parametrize("scheme", ["W4A4 int (A4 per token)", "W4 g128 GPTQ"])
@pytest.mark.parametrize("online", ["none", "every layer"])
def test_the_scheme_runs_on_the_turned_model_as_on_that_model_loaded_as_its_own(scheme, online):
    """The plan under fused rotations equals the same scheme (and online rotation) planned on a copy
    of the model whose weights are the turned ones: statistics and Hessians collected again on it."""
    loaded = with_gains(wide_llama(torch.float32, tied=True))
    calibration = build(corpus(), loaded.tokenizer, RandomSpec(nsamples=8, length=96, seed=0))
    base = PRESETS[scheme]
    rotation = RotationSpec(placement=online, residual=True, heads=True, seed=1)
    spec = QuantSpec(base.weights, base.activations, rotation=rotation)
    hessians = HessianSpec(batch_size=4, diagnostics="none")
    given = Calibrated(calibration, hessians=collect_hessians(loaded, calibration, hessians))
    plan, table = quantize(loaded, spec, given)
    assert "turned and fused" in table.attrs["fused_rotation"]

    fused = fuse_rotations(loaded, rotation)
    copy = with_gains(wide_llama(torch.float32, tied=True))
    copy.model.lm_head.weight = torch.nn.Parameter(copy.model.lm_head.weight.detach().clone(), requires_grad=False)
    for name, value in fused.floats.items():
        copy.model.get_parameter(name).data = value.clone()
    online_only = QuantSpec(base.weights, base.activations, rotation=rotation.online())
    widths = {layer.name: layer.in_features for layer in quantizable_layers(copy.model, online_only)}
    left = frozenset(fused.turned_inputs(online_only.rotation, widths))  # R1's readers: no second turn online
    assert (online == "none") == (not left)
    reference, _ = plan_quantization(copy, online_only, Calibrated(calibration, stats=collect(copy, calibration),
                                                                   hessians=collect_hessians(copy, calibration, hessians)),
                                     turned=left)
    assert set(plan.weights) == set(reference.weights)
    for name in reference.weights:
        torch.testing.assert_close(plan.weights[name], reference.weights[name], rtol=0, atol=0)
    assert set(plan.rotations) == set(reference.rotations) and not set(plan.rotations) & left
    assert all("down_proj" in name or "o_proj" in name for name in plan.rotations)  # QuaRot's online rotations
    tokens = torch.arange(5, 90).view(1, -1) % loaded.model.config.vocab_size
    torch.testing.assert_close(logits(loaded, tokens, plan), logits(copy, tokens, reference), rtol=0, atol=1e-5)


def test_a_fused_checkpoint_unties_its_head_and_reloads_at_the_simulated_perplexity(tmp_path):
    from engine.export import save_quantized
    from engine.export.size import estimated_checkpoint_bytes
    from engine.export.verify import reloaded

    loaded = with_gains(wide_llama(torch.bfloat16, tied=True))
    calibration = build(corpus(), loaded.tokenizer, RandomSpec(nsamples=8, length=96, seed=0))
    base = PRESETS["NVFP4 W4A4"]
    spec = QuantSpec(base.weights, base.activations, rotation=RotationSpec(residual=True, heads=True))
    plan, _ = quantize(loaded, spec, Calibrated(calibration))
    summary = save_quantized(loaded, plan, spec, tmp_path / "out")
    assert summary.quantized_layers == 14
    # an upper bound (every rotatable layer's matrix; R1's readers get none), the untied head counted
    assert 1.0 < estimated_checkpoint_bytes(loaded, spec) / summary.bytes < 2.0
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.tie_word_embeddings is False
    reloads_as_simulated(loaded, plan, tmp_path / "out")
    again = from_model(reloaded(tmp_path / "out", torch.bfloat16), loaded.tokenizer)
    assert again.model.lm_head.weight is not again.model.model.embed_tokens.weight
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight  # the shared model keeps its tie


def test_fused_rotations_alone_write_a_gptq_checkpoint_with_the_turned_floats(tmp_path):
    """Nothing of a fused rotation runs at inference, so the GPTQ format holds it: the turned
    embeddings, head (untied) and unit norms are the checkpoint's own tensors. An online rotation is
    refused there, saying what to do."""
    import json

    from safetensors import safe_open

    from engine.errors import ExportError
    from engine.export import save_quantized

    loaded = with_gains(wide_llama(torch.float32, tied=True))
    calibration = build(corpus(), loaded.tokenizer, RandomSpec(nsamples=8, length=96, seed=0))
    spec = QuantSpec(PRESETS["W4 g128 GPTQ"].weights, rotation=SPIN)
    given = Calibrated(calibration, hessians=collect_hessians(loaded, calibration, HessianSpec(batch_size=4,
                                                                                               diagnostics="none")))
    plan, _ = quantize(loaded, spec, given)
    save_quantized(loaded, plan, spec, tmp_path / "out", fmt="gptq")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is False
    with safe_open(tmp_path / "out" / "model.safetensors", "pt") as opened:
        for name in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"):
            assert torch.equal(opened.get_tensor(name), plan.floats[name].to(torch.bfloat16)), name
        assert not torch.equal(opened.get_tensor("lm_head.weight"), opened.get_tensor("model.embed_tokens.weight"))
    online = QuantSpec(PRESETS["W4 g128 GPTQ"].weights, rotation=RotationSpec(residual=True))
    with pytest.raises(ExportError, match="fuse the rotations alone"):
        save_quantized(loaded, plan, online, tmp_path / "online", fmt="gptq")
