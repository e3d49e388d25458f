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
    perplexity,
    quantize,
    quantized,
)
from engine.quant.methods.mappings import is_norm, tolerance
from engine.sampling import RandomSpec, build
from engine.stats import HessianSpec, collect_hessians
from tests.test_checkpoint import corpus, wide_llama, windows

SPIN = RotationSpec(placement="none", residual=True, heads=True)  # llm-compressor's SpinQuantModifier default: R1, R2
HEADS = RotationSpec(placement="none", heads=True)


def with_gains(loaded, seed=0):
    """Random norm gains (a built model's are all 1, or 0 under Gemma's 1 + w): folding them is tested."""
    generator = torch.Generator().manual_seed(seed)
    for module in loaded.model.modules():
        if is_norm(module):
            module.weight.data = (torch.rand(module.weight.shape, generator=generator) + 0.5).to(module.weight.dtype)
    return loaded


def logits(loaded, tokens, plan=None):
    with torch.inference_mode():
        if plan is None:
            return loaded.model(input_ids=tokens).logits.float()
        with quantized(loaded, plan):
            return loaded.model(input_ids=tokens).logits.float()


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
    online_only = rotation.online()
    reference, _ = quantize(copy, QuantSpec(base.weights, base.activations, rotation=online_only),
                            Calibrated(calibration, hessians=collect_hessians(copy, calibration, hessians)))
    assert set(plan.weights) == set(reference.weights)
    for name in reference.weights:
        torch.testing.assert_close(plan.weights[name], reference.weights[name], rtol=0, atol=0)
    assert set(plan.rotations) == set(reference.rotations)
    tokens = torch.arange(5, 90).view(1, -1) % loaded.model.config.vocab_size
    torch.testing.assert_close(logits(loaded, tokens, plan), logits(copy, tokens, reference), rtol=0, atol=1e-5)


def test_a_fused_checkpoint_unties_its_head_and_reloads_at_the_simulated_perplexity(tmp_path):
    from engine.export import save_quantized
    from engine.export.size import estimated_checkpoint_bytes
    from engine.export.verify import reloaded, reloaded_divergence

    loaded = with_gains(wide_llama(torch.bfloat16, tied=True))
    calibration = build(corpus(), loaded.tokenizer, RandomSpec(nsamples=8, length=96, seed=0))
    base = PRESETS["NVFP4 W4A4"]
    spec = QuantSpec(base.weights, base.activations, rotation=RotationSpec(residual=True, heads=True))
    plan, _ = quantize(loaded, spec, Calibrated(calibration))
    summary = save_quantized(loaded, plan, spec, tmp_path / "out")
    assert summary.quantized_layers == 14
    assert 0.9 < estimated_checkpoint_bytes(loaded, spec) / summary.bytes < 1.25  # the untied head counted
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.tie_word_embeddings is False
    evaluation = windows(loaded)
    with quantized(loaded, plan):
        simulated = perplexity(loaded, evaluation)
    checked, how = reloaded_divergence(tmp_path / "out", loaded, evaluation)
    assert checked.perplexity / simulated == pytest.approx(1.0, abs=1e-3)
    assert f"its {len(plan.rotations)} stored input rotations attached" in how
    again = from_model(reloaded(tmp_path / "out", torch.bfloat16), loaded.tokenizer)
    assert again.model.lm_head.weight is not again.model.model.embed_tokens.weight
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight  # the shared model keeps its tie
