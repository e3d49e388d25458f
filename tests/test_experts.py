"""MoE experts: routing per sample, per-expert ranges and Hessians against the router's own top-k,
one sequence at a time, in float64; an expert without tokens is reported, never given zeros."""
from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from engine import ModelSpec, load_model
from engine.errors import CalibscopeError
from engine.quant import quantize
from engine.runner import Execution
from engine.sampling import RandomSpec, build
from engine.stats.experts import NO_TOKENS, ExpertSpec, collect_expert_stats
from tests.moe import routed_tokens, starved

EXPERTS, ROUTER = "model.layers.1.mlp.experts", "model.layers.1.mlp.gate"


@pytest.fixture(scope="module")
def calibration(tiny_llama):
    texts = [f"{i}: " + "experts see different tokens " * (i + 2) for i in range(6)]
    data = datasets.Dataset.from_dict({"text": texts, "source": [f"e{i}" for i in range(6)], "row_id": list(range(6))})
    return build(data, tiny_llama.tokenizer, RandomSpec(nsamples=6, length=96))


@pytest.mark.parametrize("model, router_name", [("tiny-random-qwen3-moe", ROUTER), ("tiny-random-mixtral", ROUTER),
                                                ("tiny-random-gpt-oss", "model.layers.1.mlp.router")])
def test_routing_ranges_and_hessians_equal_the_routers_own_choice(model, router_name, calibration):
    """GPT-OSS's experts are stored transposed, with interleaved gate/up columns and biases: read too."""
    loaded = load_model(ModelSpec(model, dtype="float32"))  # a batch-invariant reference forward
    report = collect_expert_stats(loaded, calibration, ExpertSpec(batch_size=4, keep_hessians=True))
    top_k = loaded.model.config.num_experts_per_tok
    x, chosen, rows = routed_tokens(loaded, calibration, EXPERTS, router_name, top_k)
    config = loaded.model.config
    experts = config.num_experts if hasattr(config, "num_experts") else config.num_local_experts
    per_sample = np.zeros((len(calibration), experts), dtype=np.int64)
    for token in range(x.shape[0]):
        for expert in chosen[token].tolist():
            per_sample[int(rows[token]), expert] += 1
    np.testing.assert_array_equal(report.per_sample[EXPERTS], per_sample)
    block = report.routing[report.routing["layer"] == EXPERTS]
    assert block["tokens"].tolist() == per_sample.sum(0).tolist() and block["tokens"].sum() == top_k * x.shape[0]
    assert block["samples"].tolist() == (per_sample > 0).sum(0).tolist()
    # routing weights: the top-k of the router's softmax, renormalized where the config says so (Mixtral always)
    router = dict(loaded.model.named_modules())[router_name]
    bias = router.bias.double() if isinstance(getattr(router, "bias", None), torch.Tensor) else 0.0
    top = torch.softmax(x @ router.weight.double().T + bias, dim=-1).gather(1, chosen)
    if getattr(loaded.model.config, "norm_topk_prob", True):
        top = top / top.sum(1, keepdim=True)
    weight_sums = torch.zeros(experts, dtype=torch.float64).scatter_add_(0, chosen.reshape(-1), top.reshape(-1))
    np.testing.assert_allclose((block["mean_weight"] * block["tokens"]).fillna(0), weight_sums.numpy(), rtol=1e-4)
    for expert in range(experts):
        mine = x[(chosen == expert).any(1)]
        if len(mine) == 0:
            continue
        torch.testing.assert_close(report.kept_hessians[(EXPERTS, expert)].double(), 2 / len(mine) * mine.T @ mine,
                                   rtol=1e-4, atol=1e-5 * float(mine.abs().max()) ** 2)
        np.testing.assert_allclose(report.ranges[EXPERTS]["absmax"][expert], mine.abs().amax(0).numpy(), rtol=1e-5)
        np.testing.assert_allclose(report.ranges[EXPERTS]["minimum"][expert], mine.amin(0).numpy(), rtol=1e-5)
    diagnosed = report.hessians[report.hessians["layer"] == EXPERTS]
    assert diagnosed["tokens"].tolist() == block["tokens"].tolist() and (diagnosed["rank"] <= diagnosed["channels"]).all()
    blockwise = collect_expert_stats(loaded, calibration, ExpertSpec(batch_size=4, execution=Execution.BLOCKWISE))
    np.testing.assert_array_equal(blockwise.per_sample[EXPERTS], report.per_sample[EXPERTS])
    np.testing.assert_array_equal(blockwise.ranges[EXPERTS]["absmax"], report.ranges[EXPERTS]["absmax"])
    assert list(report.counts().index) == ["model.layers.0.mlp.experts", EXPERTS]


def test_an_expert_without_tokens_is_reported_never_given_a_zero_hessian(calibration):
    loaded = load_model(ModelSpec("tiny-random-qwen3-moe"))
    with starved(dict(loaded.model.named_modules())["model.layers.0.mlp.experts"]):
        report = collect_expert_stats(loaded, calibration, ExpertSpec(keep_hessians=True))
    assert report.unused() == [("model.layers.0.mlp.experts", 3)]
    row = report.routing.set_index(["layer", "expert"]).loc[("model.layers.0.mlp.experts", 3)]
    assert row["tokens"] == 0 and row["status"] == NO_TOKENS and row["samples"] == 0
    hessian = report.hessians.set_index(["layer", "expert"]).loc[("model.layers.0.mlp.experts", 3)]
    assert hessian["warning"] == NO_TOKENS and hessian["rank"] == 0 and np.isnan(hessian["condition_number"])
    assert ("model.layers.0.mlp.experts", 3) not in report.kept_hessians
    assert np.isnan(report.ranges["model.layers.0.mlp.experts"]["absmax"][3]).all()
    assert np.isfinite(report.ranges["model.layers.0.mlp.experts"]["absmax"][:3]).all()
    flagged = report.under_calibrated(10**6)  # every expert here has fewer tokens than that
    assert len(flagged) == len(report.routing)


def test_a_dense_model_is_refused_with_a_reason(tiny_llama, calibration):
    with pytest.raises(CalibscopeError, match="no MoE experts module"):
        collect_expert_stats(tiny_llama, calibration)


def test_llama4_experts_called_with_routed_scaled_inputs_are_read_as_they_compute(calibration):
    """Llama 4 calls its experts with the block's tokens repeated per expert, each scaled by the
    router's sigmoid score (zero where not chosen), and stores them transposed: each expert's count
    and Hessians equal float64 references over the rows its call actually computes on, one sequence
    at a time; its all-token Hessian is over every token unscaled; quantized, it runs."""
    from engine.models.layers import find_experts
    from engine.quant import QuantSpec, WeightSpec, quantized

    loaded = load_model(ModelSpec("tiny-random-llama4", dtype="float32"))
    name = "model.layers.1.feed_forward.experts"
    layer = next(found for found in find_experts(loaded.model) if found.name == name)
    assert layer.scaled_inputs and layer.transposed and layer.router == "model.layers.1.feed_forward.router"
    report = collect_expert_stats(loaded, calibration, ExpertSpec(batch_size=4, keep_hessians=True, all_tokens=True))
    seen = []
    handle = layer.module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().double()))
    try:
        with torch.inference_mode():
            for row in range(len(calibration)):
                ids = calibration.input_ids[row, : int(calibration.lengths[row])]
                loaded.model(input_ids=ids[None])
    finally:
        handle.remove()
    per_expert = torch.cat([call.view(layer.experts, -1, layer.hidden) for call in seen], dim=1)  # [E, tokens, H]
    chosen = per_expert.abs().amax(-1) > 0
    block = report.routing[report.routing["layer"] == name]
    assert block["tokens"].tolist() == chosen.sum(1).tolist()
    assert block["tokens"].sum() == loaded.model.config.num_experts_per_tok * per_expert.shape[1]
    gate_up, _ = layer.matrices()
    for expert in range(layer.experts):
        mine = per_expert[expert][chosen[expert]]
        if len(mine) == 0:
            continue
        torch.testing.assert_close(report.kept_hessians[(name, expert)].double(), 2 / len(mine) * mine.T @ mine,
                                   rtol=1e-4, atol=1e-6)
        gate, up = (mine @ gate_up[expert].double().T).chunk(2, dim=-1)
        hidden = torch.nn.functional.silu(gate) * up
        torch.testing.assert_close(report.kept_intermediate[(name, expert)].double(), 2 / len(mine) * hidden.T @ hidden,
                                   rtol=1e-4, atol=1e-6)
    tokens = torch.cat([call.view(layer.experts, -1, layer.hidden).sum(0) for call in seen])  # nonzero rows summed: scaled x
    assert report.kept_all_inputs[name].shape == (layer.hidden, layer.hidden) and tokens.shape[0] == per_expert.shape[1]
    plan, _ = quantize(loaded, QuantSpec(WeightSpec("rtn", 4, 8)))
    assert f"{name}.gate_up_proj" in plan.experts and plan.experts[f"{name}.gate_up_proj"].shape == (4, 32, 48)
    with quantized(loaded, plan):
        assert torch.isfinite(loaded.model(input_ids=calibration.input_ids[:1]).logits).all()
