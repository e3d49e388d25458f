"""The divergence from float against a direct float64 computation on the same windows, and how it
behaves: zero for the float model itself, the same through a reloaded copy, one read per window."""
import numpy as np
import pytest
import torch

from engine import ModelSpec, load_model
from engine.errors import CalibscopeError
from engine.quant import (
    QuantSpec,
    WeightSpec,
    divergence,
    evaluation_windows,
    float_reference,
    perplexity,
    quantize,
    quantized,
)
from engine.quant.request import Calibrated


def direct_divergence(float_model, model, windows):
    """Per token KL(float ‖ model), top-1 agreement and NLL, from the models' full logits in float64."""
    with torch.no_grad():
        p = torch.log_softmax(float_model(windows).logits[:, :-1].double(), -1)
        q = torch.log_softmax(model(windows).logits[:, :-1].double(), -1)
    kld = (p.exp() * (p - q)).sum(-1)
    nll = -q.gather(-1, windows[:, 1:, None]).squeeze(-1)
    return kld.numpy(), (p.argmax(-1) == q.argmax(-1)).numpy(), float(nll.mean().exp())


@pytest.fixture(scope="module")
def two_models():
    """The tiny Llama, and a copy of it with 3-bit per-channel RTN weights written in."""
    loaded = load_model(ModelSpec("tiny-random-llama"))
    evaluation = evaluation_windows(loaded.tokenizer, ["Held-out text about foxes, dogs and numbers 1 2 3. " * 40], 40, 6,
                                    "held-out")
    plan, _ = quantize(loaded, QuantSpec(WeightSpec("rtn", 3, 0)), Calibrated())
    copy = load_model(ModelSpec("tiny-random-llama"))
    with quantized(loaded, plan):
        state = {name: value.clone() for name, value in loaded.model.state_dict().items()}
    copy.model.load_state_dict(state)
    return loaded, copy, plan, evaluation


def test_divergence_matches_a_float64_computation(two_models):
    loaded, _, plan, evaluation = two_models
    reference = float_reference(loaded, evaluation, batch_size=4)
    assert reference.perplexity == pytest.approx(perplexity(loaded, evaluation), rel=1e-6)
    with quantized(loaded, plan):
        found = divergence(loaded, evaluation, reference, batch_size=4)  # 6 windows: a full batch and a partial one
        quantized_model = {name: value.clone() for name, value in loaded.model.state_dict().items()}
    float_state = {name: value.clone() for name, value in loaded.model.state_dict().items()}
    loaded.model.load_state_dict(quantized_model)
    try:
        float_model = load_model(ModelSpec("tiny-random-llama")).model
        float_model.load_state_dict(float_state)
        kld, same, expected_ppl = direct_divergence(float_model, loaded.model, evaluation.windows)
    finally:
        loaded.model.load_state_dict(float_state)
    assert found.kld.shape == same.shape == (6, 39)
    np.testing.assert_allclose(found.kld, kld, rtol=1e-4, atol=1e-9)  # float32 logits, yet a 1e-4 KL stays exact
    assert found.mean_kld == pytest.approx(kld.mean(), rel=1e-5) and found.mean_kld > 1e-5  # a random model: near uniform
    assert found.median_kld == pytest.approx(np.median(kld), rel=1e-4)
    assert found.p99_kld == pytest.approx(np.percentile(kld, 99), rel=1e-4)
    assert (found.same_top == same).mean() > 0.99  # an exact tie in float32 may break either way
    assert found.top1_agreement == pytest.approx(same.mean(), abs=0.01) and found.top1_agreement < 1
    assert found.perplexity == pytest.approx(expected_ppl, rel=1e-5)


def test_the_float_model_does_not_diverge_from_itself(two_models):
    loaded, _, _, evaluation = two_models
    reference = float_reference(loaded, evaluation)
    itself = divergence(loaded, evaluation, reference, batch_size=3)
    assert itself.mean_kld < 1e-7 and itself.top1_agreement == 1.0
    assert itself.perplexity == pytest.approx(reference.perplexity, rel=1e-6)


def test_another_model_is_compared_with_the_float_models_head(two_models):
    """A reloaded checkpoint is a second model: its logits against the float model's, whose head
    makes the reference's."""
    loaded, copy, plan, evaluation = two_models
    reference = float_reference(loaded, evaluation)
    with quantized(loaded, plan):
        simulated = divergence(loaded, evaluation, reference)
    other = divergence(copy, evaluation, reference)
    np.testing.assert_allclose(other.kld, simulated.kld, rtol=1e-5, atol=1e-8)
    assert other.perplexity == pytest.approx(simulated.perplexity, rel=1e-6)


def test_the_reference_keeps_the_float_head_when_a_plan_turns_it(two_models):
    """Fused rotations give the model another LM head (turned, the final norm's gain folded): the
    reference's logits stay the float model's, so the turned float model is at zero divergence."""
    from engine.quant import RotationSpec, fuse_rotations

    loaded, _, _, evaluation = two_models
    reference = float_reference(loaded, evaluation)
    fused = fuse_rotations(loaded, RotationSpec(placement="none", residual=True))
    assert "lm_head.weight" in fused.floats
    with quantized(loaded, fused.plan()):
        turned = divergence(loaded, evaluation, reference)
    assert turned.mean_kld < 1e-5  # float32 rounding


def test_a_reference_of_other_windows_is_refused(two_models):
    loaded, _, _, evaluation = two_models
    other = evaluation_windows(loaded.tokenizer, ["Other text entirely, about cats. " * 40], 40, 2, "other")
    with pytest.raises(CalibscopeError, match="other evaluation windows"):
        divergence(loaded, other, float_reference(loaded, evaluation))


def test_a_bf16_model_is_measured_in_float32_logits():
    loaded = load_model(ModelSpec("tiny-random-llama", dtype="bfloat16"))
    evaluation = evaluation_windows(loaded.tokenizer, ["Some held-out text, repeated. " * 30], 32, 3, "text")
    reference = float_reference(loaded, evaluation)
    assert reference.states.dtype == torch.bfloat16
    plan, _ = quantize(loaded, QuantSpec(WeightSpec("rtn", 2, 0)), Calibrated())
    with quantized(loaded, plan):
        found = divergence(loaded, evaluation, reference)
    assert found.kld.dtype == np.float32 and np.isfinite(found.kld).all() and found.mean_kld > 0


def test_per_token_nll_and_the_measures_from_a_position(two_models):
    """Per-token NLLs kept beside the KL (the float model's too), and every measure restricted to the
    positions llama-perplexity scores (from half the window on)."""
    loaded, _, plan, evaluation = two_models
    reference = float_reference(loaded, evaluation)
    with torch.no_grad():
        logits = loaded.model(evaluation.windows).logits[:, :-1].double()
    float_nll = -torch.log_softmax(logits, -1).gather(-1, evaluation.windows[:, 1:, None]).squeeze(-1).numpy()
    np.testing.assert_allclose(reference.nll, float_nll, rtol=1e-5, atol=1e-6)
    with quantized(loaded, plan):
        found = divergence(loaded, evaluation, reference)
    assert found.nll.shape == found.kld.shape and found.nll.dtype == np.float64
    assert found.perplexity == pytest.approx(float(np.exp(found.nll.mean())), rel=1e-9)
    later = found.from_position(20)
    assert later.kld.shape == (6, 19)
    np.testing.assert_array_equal(later.kld, found.kld[:, 20:])
    assert later.mean_kld == pytest.approx(found.kld[:, 20:].mean(), rel=1e-6)
    assert later.top1_agreement == pytest.approx(found.same_top[:, 20:].mean())
    assert later.perplexity == pytest.approx(float(np.exp(found.nll[:, 20:].mean())), rel=1e-9)
    with pytest.raises(CalibscopeError, match="outside windows"):
        found.from_position(39)
