"""MoE experts quantized: each expert's GPTQ on its own Hessians equals GPTQ on that expert's matrix
alone; the down projections' Hessians and the all-experts ones equal float64 references while the
forward stays the router's; an expert starved of every token never gets a NaN or zero scale."""
from __future__ import annotations

import json
from dataclasses import replace

import datasets
import pytest
import torch

from engine import ModelSpec, load_model
from engine.errors import CalibscopeError
from engine.hooks import observing
from engine.models.layers import find_experts
from engine.quant import (
    Calibrated,
    Quantization,
    QuantSpec,
    WeightSpec,
    evaluation_windows,
    gptq,
    perplexity,
    quantize,
    quantized,
)
from engine.quant.methods.experts import expert_hessians, quantize_experts
from engine.quant.plan import quantizable_layers
from engine.quant.specs import ActivationSpec, ActOrder, ExpertPolicy
from engine.sampling import RandomSpec, build
from engine.stats import HessianSpec
from engine.stats.experts import ExpertSpec, collect_expert_stats
from engine.stats.hessian_report import collect_hessians
from tests.moe import routed_tokens, starved

EXPERTS, ROUTER = "model.layers.1.mlp.experts", "model.layers.1.mlp.gate"
GPTQ = QuantSpec(WeightSpec("gptq", 4, 8, act_order=ActOrder.NONE))  # groups of 8 fit the tiny widths (32, 24)


@pytest.fixture(scope="module")
def model():
    return load_model(ModelSpec("tiny-random-qwen3-moe", dtype="float32"))


@pytest.fixture(scope="module")
def calibration(model):
    texts = [f"{i}: " + "experts see different tokens " * (i + 2) for i in range(6)]
    data = datasets.Dataset.from_dict({"text": texts, "source": [f"e{i}" for i in range(6)], "row_id": list(range(6))})
    return build(data, model.tokenizer, RandomSpec(nsamples=6, length=96))


@pytest.fixture(scope="module")
def report(model, calibration):
    return collect_expert_stats(model, calibration, ExpertSpec(batch_size=4, keep_hessians=True, all_tokens=True))


def intermediate(module, expert: int, x: torch.Tensor) -> torch.Tensor:
    """An expert's act(gate) * up in float64, written out (not through calibscope's helper)."""
    weight = module.gate_up_proj[expert].double()
    size = weight.shape[0] // 2
    return torch.nn.functional.silu(x @ weight[:size].T) * (x @ weight[size:].T)


def test_the_down_projections_and_all_experts_hessians_equal_float64_references(model, calibration, report):
    module = dict(model.model.named_modules())[EXPERTS]
    x, chosen, _ = routed_tokens(model, calibration, EXPERTS, ROUTER, model.model.config.num_experts_per_tok)
    every = report.kept_all_inputs[EXPERTS].double()
    torch.testing.assert_close(every, 2 / len(x) * x.T @ x, rtol=1e-4, atol=1e-6)
    for expert in range(module.gate_up_proj.shape[0]):
        mine = x[(chosen == expert).any(1)]
        h = intermediate(module, expert, mine)
        torch.testing.assert_close(report.kept_intermediate[(EXPERTS, expert)].double(), 2 / len(h) * h.T @ h,
                                   rtol=1e-4, atol=1e-7)
        h_all = intermediate(module, expert, x)
        torch.testing.assert_close(report.kept_all_intermediate[(EXPERTS, expert)].double(), 2 / len(h_all) * h_all.T @ h_all,
                                   rtol=1e-4, atol=1e-7)


def test_all_experts_statistics_leave_the_forward_the_routers(model, calibration):
    module = dict(model.model.named_modules())[EXPERTS]
    seen = []
    with observing([(module, "output", lambda out: seen.append(out.detach().clone()))]):
        collect_expert_stats(model, calibration, ExpertSpec(batch_size=4, all_tokens=True))
        during = list(seen)
        seen.clear()
        collect_expert_stats(model, calibration, ExpertSpec(batch_size=4, hessians=False))
    assert len(during) == len(seen) > 0 and all(torch.equal(a, b) for a, b in zip(during, seen))


def test_expert_gptq_equals_gptq_on_each_experts_own_matrix(model, calibration, report):
    dense = collect_hessians(model, calibration, HessianSpec(batch_size=4, diagnostics="none"))
    plan, table = quantize(model, GPTQ, Calibrated(hessians=dense, experts=report))
    assert "model.layers.1.mlp.gate" not in plan.weights  # the router stays float
    fused = plan.experts[f"{EXPERTS}.gate_up_proj"], plan.experts[f"{EXPERTS}.down_proj"]
    module = dict(model.model.named_modules())[EXPERTS]
    weights = GPTQ.weights
    for expert in range(module.gate_up_proj.shape[0]):
        for part, stack, hessian in (("gate_up", module.gate_up_proj, report.kept_hessians[(EXPERTS, expert)]),
                                     ("down", module.down_proj, report.kept_intermediate[(EXPERTS, expert)])):
            alone = gptq(stack[expert].detach().float(), hessian, weights.bits, weights.group_size, weights.symmetric,
                         weights.block_size, weights.damping, weights.act_order, weights.on_failure)
            torch.testing.assert_close(fused[0 if part == "gate_up" else 1][expert], alone.weight, rtol=0, atol=1e-6)
    rows = table[table["kind"] == "expert"].set_index("layer")
    assert len(rows) == 2 * 2 * 4 and rows["output_error"].notna().all()  # 2 blocks x 4 experts x (gate_up, down)
    assert set(rows["calibration"]) <= {"router", *{c for c in rows["calibration"] if c.startswith("rtn (fallback")}}


def test_an_expert_starved_of_every_token_never_gets_a_nan_or_zero_scale(model, calibration):
    starved_name = "model.layers.0.mlp.experts"
    with starved(dict(model.model.named_modules())[starved_name]):
        report = collect_expert_stats(model, calibration, ExpertSpec(batch_size=4, keep_hessians=True, all_tokens=True))
    assert (starved_name, 3) not in report.kept_hessians  # no tokens, no Hessian
    schemes = {"W4 RTN": QuantSpec(WeightSpec("rtn", 4, 8)),
               "W4 RTN asymmetric": QuantSpec(WeightSpec("rtn", 4, 8, symmetric=False)),
               "W4 GPTQ, RTN fallback": GPTQ,
               "W4 GPTQ, all-experts fallback": QuantSpec(GPTQ.weights, experts=ExpertPolicy(fallback="all-experts")),
               "W4 GPTQ, all-experts": QuantSpec(GPTQ.weights, experts=ExpertPolicy(calibration="all-experts")),
               "FP8 per channel": QuantSpec(WeightSpec("rtn", group_size=0, format="fp8"))}
    dense = collect_hessians(model, calibration, HessianSpec(batch_size=4, diagnostics="none"))
    for label, spec in schemes.items():
        plan, table = quantize(model, spec, Calibrated(hessians=dense, experts=report))
        for name, fake in plan.experts.items():
            assert torch.isfinite(fake).all(), (label, name)
        row = table.set_index("layer").loc[f"{starved_name}.3.gate_up"]
        expected = {"W4 GPTQ, RTN fallback": "rtn (fallback: 0 routed < 32)",
                    "W4 GPTQ, all-experts fallback": "all tokens (fallback: 0 routed < 32)",
                    "W4 GPTQ, all-experts": "all tokens"}.get(label, "rtn")
        assert row["calibration"] == expected, label
        assert row["weight_error"] > 0 and torch.isfinite(torch.tensor(row["weight_error"]))
    layer = next(layer for layer in find_experts(model.model) if layer.name == starved_name)
    weights = (layer.module.gate_up_proj.detach(), layer.module.down_proj.detach())
    for spec in schemes.values():  # the scales a checkpoint would store for the starved expert
        done = quantize_experts(layer, weights, spec.weights, expert_hessians(layer, report, spec.experts, spec.needs_hessians))
        for part in ("gate_up", "down"):
            scale = done.integers[f"{starved_name}.3.{part}"].grids.scale
            assert torch.isfinite(scale).all() and (scale > 0).all()


def test_experts_quantized_change_the_models_perplexity_and_what_is_not_built_says_so(model, calibration, report):
    windows = evaluation_windows(model.tokenizer, ["Held out text about experts and routers. " * 30], 64, 2, "held out")
    float_ppl = perplexity(model, windows)
    dense_only, _ = quantize(model, QuantSpec(WeightSpec("rtn", 3, 8), name_pattern=r"^(?!.*\.experts)"))
    with_experts, _ = quantize(model, QuantSpec(WeightSpec("rtn", 3, 8)))
    assert not dense_only.experts and set(with_experts.experts) == {f"model.layers.{b}.mlp.experts.{p}_proj"
                                                                   for b in (0, 1) for p in ("gate_up", "down")}
    with quantized(model, dense_only):
        dense_ppl = perplexity(model, windows)
    with quantized(model, with_experts):
        experts_ppl = perplexity(model, windows)
    assert perplexity(model, windows) == float_ppl  # the model is put back
    assert experts_ppl != dense_ppl and all(value < float("inf") for value in (dense_ppl, experts_ppl))
    assert all(layer.name != ROUTER for layer in quantizable_layers(model.model, GPTQ))
    with pytest.raises(CalibscopeError, match="Input quantization of MoE experts"):
        quantize(model, QuantSpec(WeightSpec("rtn", 8, 0), ActivationSpec(8, granularity="token")))
    dense = collect_hessians(model, calibration, HessianSpec(batch_size=4, diagnostics="none"))
    with pytest.raises(CalibscopeError, match="experts' GPTQ needs each expert's Hessians"):
        quantize(model, GPTQ, Calibrated(hessians=dense))  # neither an expert report nor a set to collect one on
    _, table = quantize(model, GPTQ, Calibrated(samples=calibration, hessians=dense))  # collected on the set
    assert table[table["kind"] == "expert"]["output_error"].notna().any()


def test_block_by_block_gptq_quantizes_the_experts_with_their_block(model, calibration, report):
    from engine.stats.hessian_report import collect_hessians as dense_hessians

    one_pass, table = quantize(model, Quantization(GPTQ, sequential=True, propagate=False, hessians=HessianSpec(batch_size=4)),
                               Calibrated(calibration))
    dense = dense_hessians(model, calibration, HessianSpec(batch_size=4, diagnostics="none"))
    at_once, _ = quantize(model, GPTQ, Calibrated(hessians=dense, experts=report))
    assert set(one_pass.experts) == set(at_once.experts) and len(table[table["kind"] == "expert"]) == 16
    for name, fake in at_once.experts.items():  # the same Hessians, gathered by the block-by-block pass
        torch.testing.assert_close(one_pass.experts[name], fake, rtol=0, atol=1e-5)
    sequential, _ = quantize(model, Quantization(GPTQ, sequential=True, hessians=HessianSpec(batch_size=4)),
                             Calibrated(calibration))
    second = f"{EXPERTS}.down_proj"  # block 1's experts saw block 0 quantized: other Hessians, other weights
    assert not torch.equal(sequential.experts[second], at_once.experts[second])
    with quantized(model, sequential):
        assert torch.isfinite(model.model(input_ids=torch.tensor([[1, 40, 41]])).logits).all()


def test_block_by_block_all_experts_gptq_needs_no_routed_hessians(model, calibration, report, monkeypatch):
    """Every expert on every token: the pass accumulates only the all-token Hessians (a block's routed
    ones are experts x hidden², dropped from its peak) and quantizes as all at once does."""
    from engine.stats import experts as expert_stats
    from engine.stats.hessian_report import collect_hessians as dense_hessians

    made = []
    original = expert_stats.ExpertAccumulator.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(expert_stats.ExpertAccumulator, "__init__", recording)
    every = replace(GPTQ, experts=ExpertPolicy(calibration="all-experts"))
    one_pass, table = quantize(model, Quantization(every, sequential=True, propagate=False, hessians=HessianSpec(batch_size=4)),
                               Calibrated(calibration))
    assert made and all(accumulator.hessians is None and accumulator.all_down is not None for accumulator in made)
    dense = dense_hessians(model, calibration, HessianSpec(batch_size=4, diagnostics="none"))
    at_once, _ = quantize(model, every, Calibrated(hessians=dense, experts=report))
    assert set(table[table["kind"] == "expert"]["calibration"]) == {"all tokens"}
    for name, fake in at_once.experts.items():
        torch.testing.assert_close(one_pass.experts[name], fake, rtol=0, atol=1e-5)


def gpt_oss_intermediate(module, expert: int, x: torch.Tensor) -> torch.Tensor:
    """GPT-OSS's expert written out: [E, H, 2I] weights, interleaved gate / up columns, biases, a clamped gate."""
    gate_up = x @ module.gate_up_proj[expert].double() + module.gate_up_proj_bias[expert].double()
    gate, up = gate_up[..., ::2].clamp(max=module.limit), gate_up[..., 1::2].clamp(-module.limit, module.limit)
    return (up + 1) * gate * torch.sigmoid(gate * module.alpha)


def test_gpt_oss_experts_are_read_and_quantized_in_their_own_layout(calibration):
    loaded = load_model(ModelSpec("tiny-random-gpt-oss", dtype="float32"))
    report = collect_expert_stats(loaded, calibration, ExpertSpec(batch_size=4, keep_hessians=True))
    module = dict(loaded.model.named_modules())[EXPERTS]
    x, chosen, _ = routed_tokens(loaded, calibration, EXPERTS, "model.layers.1.mlp.router", 2)
    for expert in range(4):
        h = gpt_oss_intermediate(module, expert, x[(chosen == expert).any(1)])
        torch.testing.assert_close(report.kept_intermediate[(EXPERTS, expert)].double(), 2 / len(h) * h.T @ h,
                                   rtol=1e-4, atol=1e-7)
    dense = collect_hessians(loaded, calibration, HessianSpec(batch_size=4, diagnostics="none"))
    plan, _ = quantize(loaded, GPTQ, Calibrated(hessians=dense, experts=report))
    gate_up = plan.experts[f"{EXPERTS}.gate_up_proj"]
    assert gate_up.shape == module.gate_up_proj.shape  # written back in the module's [E, H, 2I] layout
    weights = GPTQ.weights
    for expert in range(4):  # GPTQ on the expert's [2I, H] matrix (its rows interleaved: rows are independent)
        alone = gptq(module.gate_up_proj[expert].detach().T.float(), report.kept_hessians[(EXPERTS, expert)], weights.bits,
                     weights.group_size, weights.symmetric, weights.block_size, weights.damping, weights.act_order,
                     weights.on_failure)
        torch.testing.assert_close(gate_up[expert].T, alone.weight, rtol=0, atol=1e-6)
    windows = evaluation_windows(loaded.tokenizer, ["Held out text about experts and routers. " * 30], 64, 2, "held out")
    before = perplexity(loaded, windows)
    with quantized(loaded, plan):
        assert perplexity(loaded, windows) != before
    assert perplexity(loaded, windows) == before


@pytest.mark.parametrize("name, parts", [
    ("tiny-random-qwen3-moe", ("model.layers.{block}.mlp.experts.{expert}", ("gate_proj", "up_proj", "down_proj"))),
    ("tiny-random-mixtral", ("model.layers.{block}.block_sparse_moe.experts.{expert}", ("w1", "w3", "w2"))),
])
def test_experts_are_written_per_expert_as_their_checkpoints_name_them_and_reload_to_the_simulation(name, parts, tmp_path):
    """A compressed-tensors checkpoint holds each expert's gate, up and down as the architecture's own
    checkpoints name them (transformers' conversion mapping, read backwards), routers listed float;
    read back, and reloaded by transformers (which fuses them again), they are the simulated weights."""
    from safetensors import safe_open

    from engine.export import save_quantized
    from engine.export.experts import simulated_layers
    from engine.export.verify import dequantized_layers, largest_weight_difference, reloaded

    loaded = load_model(ModelSpec(name, dtype="float32"))
    texts = [f"{i}: " + "experts see different tokens " * (i + 2) for i in range(6)]
    data = datasets.Dataset.from_dict({"text": texts, "source": [f"e{i}" for i in range(6)], "row_id": list(range(6))})
    calibration = build(data, loaded.tokenizer, RandomSpec(nsamples=6, length=96))
    dense = collect_hessians(loaded, calibration, HessianSpec(batch_size=4, diagnostics="none"))
    plan, _ = quantize(loaded, GPTQ, Calibrated(samples=calibration, hessians=dense))
    folder = tmp_path / "checkpoint"
    save_quantized(loaded, plan, GPTQ, folder, dtype="model")  # float32: the simulated weights to the bit
    module, names = parts
    experts = find_experts(loaded.model)
    expected = {f"{module.format(block=b, expert=e)}.{part}" for b in range(len(experts))
                for e in range(experts[0].experts) for part in names}
    written = dict(dequantized_layers(folder))
    assert expected <= set(written)
    # safe_open has keys() but is neither iterable nor a container (SIM118's fix would raise)
    keys = {key for file in folder.glob("*.safetensors") for key in safe_open(file, "pt").keys()}  # noqa: SIM118
    assert not any(key.endswith(("gate_up_proj", "experts.down_proj")) for key in keys)  # no float copy of the fused experts
    ignored = json.loads((folder / "config.json").read_text())["quantization_config"]["ignore"]
    assert {layer.router for layer in experts} <= set(ignored)
    assert largest_weight_difference(folder, simulated_layers(loaded.model, plan)) == 0.0
    model = reloaded(folder, torch.float32)
    state = model.state_dict()
    for parameter, fake in plan.experts.items():
        torch.testing.assert_close(state[parameter], fake, rtol=0, atol=0)


def test_experts_the_checkpoint_cannot_hold_are_refused_before_anything_is_written(calibration, tmp_path):
    from engine.errors import ExportError
    from engine.export import save_quantized

    gpt_oss = load_model(ModelSpec("tiny-random-gpt-oss", dtype="float32"))
    rtn = QuantSpec(WeightSpec("rtn", 4, 8))
    plan, _ = quantize(gpt_oss, rtn)
    with pytest.raises(ExportError, match="GPT-OSS-style experts"):
        save_quantized(gpt_oss, plan, rtn, tmp_path / "gpt-oss")
    assert not (tmp_path / "gpt-oss").exists()
    fp8 = QuantSpec(WeightSpec("rtn", 8, 0, format="fp8"))
    qwen = load_model(ModelSpec("tiny-random-qwen3-moe", dtype="float32"))
    plan, _ = quantize(qwen, fp8)
    with pytest.raises(ExportError, match="integer schemes"):
        save_quantized(qwen, plan, fp8, tmp_path / "fp8")
    assert not (tmp_path / "fp8").exists()
