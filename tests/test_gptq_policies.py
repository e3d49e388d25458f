"""GPTQ as the peers ship it: what happens when a Hessian does not factorize, and their presets."""
from __future__ import annotations

import pytest
import torch

from engine.errors import CalibscopeError
from engine.quant import PRESETS
from engine.quant.formats.rtn import rtn
from engine.quant.methods.gptq import gptq, group_aware_order
from engine.quant.methods.matrices import quantize_groups
from engine.quant.specs import PEER_GPTQ, ActOrder, CholeskyFailure, WeightSpec

# Indefinite: eigenvalues 2.5 and -0.5 (mean diagonal 1). H + λI factorizes once λ > 0.5.
INDEFINITE = torch.tensor([[1.0, 1.5], [1.5, 1.0]])
WEIGHT = torch.tensor([[0.3, -0.7], [1.1, 0.2], [-0.4, 0.9]])


def test_tenfold_and_stepwise_raise_damping_until_it_factorizes():
    assert gptq(WEIGHT, INDEFINITE, 4, policy=CholeskyFailure.TENFOLD).damping == 1.0  # 0.01, 0.1 fail
    stepwise = gptq(WEIGHT, INDEFINITE, 4, damping=0.05, policy=CholeskyFailure.STEPWISE, step=0.01)
    assert 0.5 < stepwise.damping <= 0.52 and not stepwise.fell_back  # GPTQModel: +0.01 at a time


def test_the_rtn_policy_rounds_that_layer_to_nearest_and_says_so():
    result = gptq(WEIGHT, INDEFINITE, 4, policy=CholeskyFailure.RTN)
    assert result.fell_back and result.damping is None
    torch.testing.assert_close(result.weight, rtn(WEIGHT, 4, 0, True))
    done = quantize_groups([[WEIGHT]], WeightSpec("gptq", 4, 0, on_failure="rtn"), [INDEFINITE], ["model.layers.3.mlp.up_proj"])
    assert done[0][0].costs["fallback"] == "rtn"
    healthy = quantize_groups([[WEIGHT]], WeightSpec("gptq", 4, 0, on_failure="rtn"), [torch.eye(2)])
    assert "fallback" not in healthy[0][0].costs


def test_the_raise_policy_names_the_layer_and_what_to_do():
    with pytest.raises(CalibscopeError, match=r"model.layers.3.mlp.up_proj: GPTQ: the Hessian does not factorize with "
                                              r"damping 0.01 .*fall back to RTN"):
        quantize_groups([[WEIGHT]], WeightSpec("gptq", 4, 0, on_failure="raise"), [INDEFINITE], ["model.layers.3.mlp.up_proj"])


def test_peer_presets_carry_each_tools_defaults():
    default = PRESETS["W4 g128 GPTQ"].weights  # calibscope's default is llm-compressor's GPTQModifier W4A16
    assert ((default.act_order, default.on_failure, default.damping, default.block_size)
            == (ActOrder.STATIC, CholeskyFailure.RTN, 0.01, 128))
    assert PEER_GPTQ["gptqmodel"].damping == 0.05 and PEER_GPTQ["gptqmodel"].act_order is ActOrder.GROUP_AWARE
    assert PEER_GPTQ["gptqmodel"].on_failure is CholeskyFailure.STEPWISE
    assert PEER_GPTQ["gptq-reference"].on_failure is CholeskyFailure.RAISE
    assert PRESETS["W4 g128 GPTQ (gptq-reference)"].weights.act_order is ActOrder.NONE
    with pytest.raises(Exception, match="damping_step"):
        WeightSpec("gptq", damping_step=0)


def test_the_quantize_tab_keeps_a_presets_damping_and_policy():
    from ui.tabs.quantize import QuantizeForm

    chosen = QuantizeForm(preset="W4 g128 GPTQ (gptqmodel)").spec().weights
    assert chosen.damping == 0.05 and chosen.on_failure is CholeskyFailure.STEPWISE
    assert QuantizeForm(preset="Custom", act_order="none").spec().weights.on_failure is CholeskyFailure.RTN  # the default's


def gar_reference(diagonal: torch.Tensor, group_size: int) -> torch.Tensor:
    """A loop transcription of GPTQModel's gar_ref.py: per-group descending order, groups by their
    maximum H_ii (descending), composed; the columns of a partial last group appended in order."""
    groups = diagonal.numel() // group_size
    local = [torch.argsort(diagonal[g * group_size:(g + 1) * group_size], descending=True) for g in range(groups)]
    scores = torch.stack([diagonal[g * group_size:(g + 1) * group_size].max() for g in range(groups)])
    order = [int(g * group_size + i) for g in torch.argsort(scores, descending=True, stable=True).tolist() for i in local[g]]
    return torch.tensor(order + list(range(groups * group_size, diagonal.numel())))


@pytest.mark.parametrize("columns", [64, 72])
def test_group_aware_order_is_gptqmodels_and_equals_plain_gptq_on_the_permuted_layer(columns):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(400, columns, generator=generator) * torch.rand(columns, generator=generator) * 3
    hessian, weight = 2 * x.T @ x / 400, torch.randn(24, columns, generator=generator)
    order = group_aware_order(hessian.diagonal()[None], 16)[0]
    assert torch.equal(order, gar_reference(hessian.diagonal(), 16))
    # the groups stay whole and aligned in that order, so GAR is in-order GPTQ on the permuted layer
    grouped = gptq(weight, hessian, 4, 16, block_size=32, act_order=ActOrder.GROUP_AWARE)
    permuted = gptq(weight[:, order], hessian[order][:, order], 4, 16, block_size=32, act_order=ActOrder.NONE)
    torch.testing.assert_close(grouped.weight, permuted.weight[:, torch.argsort(order)])
    assert grouped.group_index is None  # nothing to reorder at inference
    plain = gptq(weight, hessian, 4, 16, block_size=32, act_order=ActOrder.NONE)
    assert not torch.equal(grouped.weight, plain.weight)


@pytest.mark.parametrize("act_order", ["none", "static", "dynamic", "group-aware"])
def test_gptq_never_writes_the_callers_hessian(act_order):
    """GPTQ damps and permutes one copy it owns (block by block, Hessians of 14,336 inputs are 822 MB
    each, so it makes no other); the report's Hessian is read, never changed, retries included."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(300, 64, generator=generator)
    hessian = x.T @ x
    hessian[7] = 0
    hessian[:, 7] = 0  # a dead input: GPTQ reads its H_ii as 1
    kept = hessian.clone()
    gptq(torch.randn(16, 64, generator=generator), hessian, 4, 32, act_order=act_order)
    assert torch.equal(hessian, kept)
    indefinite = torch.eye(32)
    indefinite[20:, 20:] = -1e-3  # factorizes only after the damping is raised
    kept = indefinite.clone()
    result = gptq(torch.randn(8, 32, generator=generator), indefinite, 4, 0, act_order=act_order,
                  policy=CholeskyFailure.STEPWISE)
    assert result.damping > 0.01 and torch.equal(indefinite, kept)
