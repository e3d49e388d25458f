"""GPTQ as the peers ship it: what happens when a Hessian does not factorize, and their presets."""
from __future__ import annotations

import pytest
import torch

from engine.errors import CalibscopeError
from engine.quant import PRESETS
from engine.quant.gptq import gptq
from engine.quant.plan import quantize_groups
from engine.quant.rtn import rtn
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
    assert done[0][0][1]["fallback"] == "rtn"
    healthy = quantize_groups([[WEIGHT]], WeightSpec("gptq", 4, 0, on_failure="rtn"), [torch.eye(2)])
    assert "fallback" not in healthy[0][0][1]


def test_the_raise_policy_names_the_layer_and_what_to_do():
    with pytest.raises(CalibscopeError, match=r"model.layers.3.mlp.up_proj: GPTQ: the Hessian does not factorize with "
                                              r"damping 0.01 .*fall back to RTN"):
        quantize_groups([[WEIGHT]], WeightSpec("gptq", 4, 0, on_failure="raise"), [INDEFINITE], ["model.layers.3.mlp.up_proj"])


def test_peer_presets_carry_each_tools_defaults():
    assert PEER_GPTQ["llm-compressor"].act_order is ActOrder.STATIC and PEER_GPTQ["llm-compressor"].on_failure is CholeskyFailure.RTN
    assert PEER_GPTQ["gptqmodel"].damping == 0.05 and PEER_GPTQ["gptqmodel"].act_order is ActOrder.NONE
    assert PEER_GPTQ["gptqmodel"].on_failure is CholeskyFailure.STEPWISE
    assert PEER_GPTQ["gptq-reference"].on_failure is CholeskyFailure.RAISE
    assert PRESETS["W4 g128 GPTQ (llm-compressor)"].weights == PEER_GPTQ["llm-compressor"]
    with pytest.raises(Exception, match="damping_step"):
        WeightSpec("gptq", damping_step=0)


def test_the_quantize_tab_keeps_a_presets_damping_and_policy():
    from ui.tabs.quantize import QuantizeForm

    chosen = QuantizeForm(preset="W4 g128 GPTQ (gptqmodel)").spec().weights
    assert chosen.damping == 0.05 and chosen.on_failure is CholeskyFailure.STEPWISE
    assert QuantizeForm(preset="Custom", act_order="static").spec().weights.on_failure is CholeskyFailure.TENFOLD
