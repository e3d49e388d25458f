"""Mixed precision: the knapsack against brute force, the budget and vLLM's fused groups kept, the
rules as llama.cpp and the usual practice state them, the mixed plan equal to the uniform plans layer
by layer, and its checkpoint (one config group per width) reloaded at the simulated numbers."""
import itertools
import json

import numpy as np
import pytest

from engine.errors import CalibscopeError, ExportError, SpecError
from engine.export import save_quantized
from engine.export.verify import reloaded_divergence
from engine.figures import mixed_allocation
from engine.quant import ActivationSpec, Calibrated, Quantization, QuantSpec, WeightSpec, evaluate, quantize
from engine.quant.methods.mixed import LayerGroup, knapsack, more_bits_blocks, rule_choice, rule_order, units
from engine.quant.specs import Allocation, MixedSpec
from tests.test_checkpoint import calibrated, model, windows  # noqa: F401  (fixtures)

W4 = WeightSpec("gptq", 4, 128)


@pytest.mark.parametrize("seed", range(6))
def test_the_knapsack_finds_the_brute_force_optimum(seed):
    generator = np.random.default_rng(seed)
    cost = generator.integers(1, 9, size=(6, 3))
    loss = generator.random((6, 3))
    capacity = int(cost.min(axis=1).sum() + generator.integers(0, 12))
    chosen = knapsack(cost, loss, capacity)
    best = min((sum(loss[i, c] for i, c in enumerate(choice)), choice) for choice in itertools.product(range(3), repeat=6)
               if sum(cost[i, c] for i, c in enumerate(choice)) <= capacity)
    assert sum(cost[i, c] for i, c in enumerate(chosen)) <= capacity
    assert sum(loss[i, c] for i, c in enumerate(chosen)) == pytest.approx(best[0])


def test_the_knapsack_says_when_nothing_fits():
    with pytest.raises(CalibscopeError, match="fits the budget"):
        knapsack(np.array([[5, 6]]), np.array([[1.0, 0.0]]), 4)


def test_costs_are_divided_exactly_by_their_common_divisor():
    groups = [LayerGroup(("q", "k", "v"), 0, ((1024, 640), (256, 640), (256, 640))), LayerGroup(("down",), 0, ((640, 2048),))]
    cost = np.array([[group.stored_bits(W4, bits) for bits in (3, 4, 8)] for group in groups], dtype=object)
    assert cost[0, 1] == 1536 * 640 * 4 + 1536 * 5 * 16  # the integers and one bf16 scale per 128 inputs of each row
    scaled, capacity = units(cost, 10**7)
    divisor = cost[0, 0] // scaled[0, 0]
    assert (scaled * divisor == cost.astype(np.int64)).all() and capacity == 10**7 // divisor


def test_llama_cpps_rule_favours_the_first_and_last_eighth_and_every_third_block():
    # llama.cpp's use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2, for 32 layers
    assert more_bits_blocks(32) == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    groups = [LayerGroup((f"model.layers.{b}.{name}",), b, ((8, 8),)) for b in range(4)
              for name in ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj")]
    order = rule_order(groups, Allocation.LLAMA_CPP)
    assert all(groups[g].names[0].endswith("down_proj") for g in order)  # q_proj here stands alone, without v
    edges = rule_order(groups, Allocation.EDGES)
    assert [groups[g].block for g in edges[:6]] == [0, 0, 0, 3, 3, 3]


def test_a_rule_upgrades_in_its_order_while_the_budget_allows():
    cost = np.array([[3, 4, 8]] * 4, dtype=object)
    assert list(rule_choice(cost, [2, 0, 1, 3], 4 * 4 + 4)) == [1, 1, 2, 1]  # uniform 4, then group 2 to 8 bits
    assert list(rule_choice(cost, [2, 0], 13)) == [0, 0, 1, 0]  # 4 bits everywhere does not fit: 3, and the first favoured
    # group takes the widest width the one bit left affords


def test_mixed_specs_refuse_what_they_cannot_do():
    with pytest.raises(SpecError, match="at least two"):
        MixedSpec(4.5, (4,))
    with pytest.raises(SpecError, match="outside the widths"):
        MixedSpec(1.5, (3, 4))
    with pytest.raises(SpecError, match="weight-only"):
        QuantSpec(W4, ActivationSpec(8), mixed=MixedSpec())
    with pytest.raises(SpecError, match="mixed precision"):
        Quantization(QuantSpec(W4, mixed=MixedSpec()), sequential=True)


@pytest.fixture(scope="module")
def mixed_runs(model, calibrated):  # noqa: F811
    calibration, _, hessians = calibrated
    found = {}
    for allocation in Allocation:
        spec = QuantSpec(W4, mixed=MixedSpec(5.0, (3, 4, 8), allocation))
        found[allocation] = quantize(model, spec, Calibrated(calibration, hessians=hessians))
    return found


def test_the_mixed_plan_is_the_uniform_plans_layer_by_layer_within_the_budget(model, calibrated, mixed_runs):  # noqa: F811
    hessians = calibrated[2]
    uniform = {bits: quantize(model, QuantSpec(WeightSpec("gptq", bits, 128)), Calibrated(hessians=hessians))[0]
               for bits in (3, 4, 8)}
    for allocation, (plan, table) in mixed_runs.items():
        widths = dict(zip(table["layer"], table["bits"]))
        assert len(set(widths.values())) > 1, allocation  # 5 bits a weight: neither all 4 nor all 8
        for name, bits in widths.items():
            assert (plan.weights[name] == uniform[bits].weights[name]).all(), (allocation, name)
        average = (table["bits_per_weight"] * table["weights"]).sum() / table["weights"].sum()
        assert average <= 5.0
        for block in table["block"].unique() if "block" in table else {name.split(".")[2] for name in widths}:
            layers = {name: bits for name, bits in widths.items() if f".{block}." in name}
            attention = {bits for name, bits in layers.items() if name.endswith(("q_proj", "k_proj", "v_proj"))}
            mlp = {bits for name, bits in layers.items() if name.endswith(("gate_proj", "up_proj"))}
            assert len(attention) == len(mlp) == 1, (allocation, layers)  # vLLM's fused layers: one width


def test_the_measured_allocation_predicts_less_loss_than_the_rules(mixed_runs):
    """On its own objective (the summed output error), the knapsack's choice is at or below every rule's."""
    def summed_error(table):
        return float(table["output_error"].sum())
    measured = summed_error(mixed_runs[Allocation.OUTPUT_ERROR][1])
    assert all(measured <= summed_error(mixed_runs[rule][1]) + 1e-12 for rule in (Allocation.EDGES, Allocation.LLAMA_CPP))


def test_a_budget_below_the_narrowest_width_is_refused_with_its_cost(model, calibrated):  # noqa: F811
    with pytest.raises(CalibscopeError, match="below the narrowest width's own cost .3.1"):
        quantize(model, QuantSpec(W4, mixed=MixedSpec(3.05, (3, 4))), Calibrated(hessians=calibrated[2]))


def test_the_divergence_allocation_needs_the_calibration_set(model, calibrated):  # noqa: F811
    spec = QuantSpec(W4, mixed=MixedSpec(4.5, (3, 4, 8), Allocation.DIVERGENCE))
    with pytest.raises(CalibscopeError, match="divergence allocation runs its own pass"):
        quantize(model, spec, Calibrated(hessians=calibrated[2]))


def test_a_mixed_checkpoint_has_a_config_group_per_width_and_reloads_at_the_simulated_numbers(model, calibrated,  # noqa: F811
                                                                                           tmp_path):
    calibration, _, hessians = calibrated
    spec = QuantSpec(WeightSpec("gptq", 4, 128), mixed=MixedSpec(5.0, (4, 8)))
    evaluation = windows(model)
    folder = tmp_path / "mixed"
    report = evaluate(model, spec, Calibrated(calibration, hessians=hessians), evaluation,
                      on_plan=lambda plan: save_quantized(model, plan, spec, folder, dtype="model"))  # float32: exact
    settings = json.loads((folder / "config.json").read_text())["quantization_config"]
    groups = settings["config_groups"]
    assert {group["weights"]["num_bits"] for group in groups.values()} == {4, 8} and settings["format"] == "pack-quantized"
    table = report.layers
    for group in groups.values():
        bits = group["weights"]["num_bits"]
        assert sorted(group["targets"]) == sorted(table.loc[table["bits"] == bits, "layer"])
    assert json.loads((folder / "calibscope.json").read_text())["layers_per_width"]
    back, how = reloaded_divergence(folder, model, evaluation)
    assert how == "transformers from_pretrained"
    assert back.perplexity / report.quantized_perplexity == pytest.approx(1.0, abs=1e-6)
    assert back.mean_kld == pytest.approx(report.divergence.mean_kld, rel=1e-3)
    with pytest.raises(ExportError, match="one width for every layer"):
        save_quantized(model, quantize(model, spec, Calibrated(hessians=hessians))[0], spec, tmp_path / "gptq", "gptq")


def test_the_allocation_figure_shows_each_layers_bits_by_block(model, calibrated):  # noqa: F811
    calibration, _, hessians = calibrated
    spec = QuantSpec(W4, mixed=MixedSpec(5.0, (3, 4, 8)))
    report = evaluate(model, spec, Calibrated(calibration, hessians=hessians), windows(model))
    fig = mixed_allocation(report)
    (heatmap,) = fig.data
    assert list(heatmap.x) == ["0", "1"] and list(heatmap.y)[:3] == ["q_proj", "k_proj", "v_proj"]
    expected = report.layers.set_index("layer")["bits"]
    assert heatmap.z[0][1] == expected["model.layers.1.self_attn.q_proj"]
    assert f"average {report.meta['average_bits']:.3f}" in fig.layout.title.text and report.meta["average_bits"] <= 5.0
