"""Figure builders of quantization, sweeps, selection and comparison, checked on their content."""
import numpy as np
import pandas as pd
import pytest

from engine.experiments.sweep import SweepResult
from engine.figures.quant import KLD_FLOOR, divergence_runs, perplexity_runs, sensitivity_depth
from engine.figures.rotation import rotation_ranges
from engine.figures.selection import comparison_bars, selection_scatter, sweep_curves
from engine.quant import Divergence, QuantReport, QuantSpec, RotationSpec, WeightSpec


def test_sensitivity_depth_shows_each_measure_in_execution_order():
    layers = pd.DataFrame({"layer": ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"],
                           "output_error": [0.01, 0.2], "input_error": [0.001, np.nan], "perplexity_change": [0.1, 2.5]})
    report = QuantReport(QuantSpec(WeightSpec("gptq", 4, 128)), 20.0, 22.0, layers, {})
    fig = sensitivity_depth(report)
    bars, output, inputs = fig.data
    assert bars.type == "bar" and list(bars.y) == [0.1, 2.5] and list(bars.x) == ["0.q_proj", "0.down_proj"]
    assert list(output.y) == [0.01, 0.2] and output.name.startswith("weights") and inputs.name.startswith("activations")
    assert "W4 g128 GPTQ" in fig.layout.title.text and fig.layout.yaxis.type == "log"


def test_an_awq_runs_depth_figure_shows_the_error_with_and_without_awq():
    layers = pd.DataFrame({"layer": ["model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"],
                           "output_error": [0.01, 0.02], "output_error_before_awq": [0.03, 0.025]})
    fig = sensitivity_depth(QuantReport(QuantSpec(WeightSpec("rtn", 4, 128, symmetric=False)), 20.0, 22.0, layers, {}))
    after, before = fig.data
    assert list(after.y) == [0.01, 0.02] and list(before.y) == [0.03, 0.025] and "without AWQ" in before.name


def test_perplexity_runs_put_float_beside_each_run():
    layers = pd.DataFrame({"layer": ["model.layers.0.mlp.down_proj"]})
    runs = [QuantReport(QuantSpec(WeightSpec("gptq", 4, 128)), 20.0, 25.0, layers, {}),
            QuantReport(QuantSpec(WeightSpec("rtn", 3, 128)), 20.0, 21.0, layers, {})]
    fig = perplexity_runs(runs)
    bars, floats = fig.data
    assert list(bars.x) == ["#1 W4 g128 GPTQ", "#2 W3 g128 RTN"] and list(bars.y) == [25.0, 21.0]
    assert list(floats.y) == [20.0, 20.0]


def test_divergence_runs_draw_each_runs_tokens_as_a_cumulative_share():
    layers = pd.DataFrame({"layer": ["model.layers.0.mlp.down_proj"]})
    kld = np.array([[0.0, 0.01, 0.02, 0.5], [0.001, 0.002, 0.03, 2.0]], dtype=np.float32)
    same = np.array([[True, True, True, False], [True, True, True, True]])
    measured = QuantReport(QuantSpec(WeightSpec("gptq", 4, 128)), 20.0, 25.0, layers, {"evaluation": "wiki"},
                           Divergence(25.0, kld, same))
    older = QuantReport(QuantSpec(WeightSpec("rtn", 3, 128)), 20.0, 21.0, layers, {})  # made before divergence was measured
    fig = divergence_runs([older, measured])
    (line,) = fig.data
    assert list(line.x) == pytest.approx([KLD_FLOOR, 0.001, 0.002, 0.01, 0.02, 0.03, 0.5, 2.0])  # the exact zero at the floor
    assert list(line.y) == pytest.approx([k / 8 for k in range(1, 9)])
    assert line.name.startswith("#2: mean 0.3204, p99") and "same top 87.5%" in line.name
    assert "#2 W4 g128 GPTQ (wiki)" in line.hovertemplate
    assert fig.layout.xaxis.type == "log"
    assert divergence_runs([older]) is None


def test_sweep_curves_plot_mean_and_band_below_the_full_count():
    rows = pd.DataFrame([{"shuffle": s, "count": n, "key": k, "absmax_change": c, "percentile_change": c / 2,
                          "hessian_change": c * 3, "nvfp4_headroom_change": c / 4}
                         for s in (0, 1) for n, base in ((1, 0.4), (4, 0.1), (8, 0.0)) for k in ("a", "b")
                         for c in [base * (1 + s)]])
    fig = sweep_curves(SweepResult(rows, [1, 4, 8], {"shuffles": 2, "inputs": 2}))
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["|max| (= an int8 / FP8 static minmax scale)", "percentile", "Hessian (Frobenius)",
                                       "NVFP4 global scale, headroom"]  # only the metrics the sweep has
    assert lines[3].y == pytest.approx([0.15, 0.0375])
    absmax = lines[0]
    assert list(absmax.x) == [1, 4] and absmax.y == pytest.approx([0.6, 0.15])  # mean of shuffles 0.4 and 0.8
    band = fig.data[0]
    assert band.fill == "toself" and list(band.y) == pytest.approx([0.8, 0.2, 0.1, 0.4])
    assert "all 8" in fig.layout.title.text and fig.layout.xaxis.type == "log"


def test_sweep_curves_show_an_exact_zero_at_the_floor_instead_of_dropping_it():
    rows = pd.DataFrame([{"shuffle": 0, "count": n, "key": "a", "absmax_change": c, "percentile_change": c}
                         for n, c in ((1, 0.3), (2, 0.0), (4, 0.0))])
    fig = sweep_curves(SweepResult(rows, [1, 2, 4], {"shuffles": 1, "inputs": 1}))
    absmax = next(t for t in fig.data if t.mode == "lines+markers")
    assert list(absmax.x) == [1, 2] and absmax.y[1] == pytest.approx(0.3 / 4)  # 0 at the floor, not dropped
    assert list(absmax.marker.symbol) == ["circle", "triangle-down-open"] and list(absmax.customdata)[1] == "exactly 0"


def test_selection_scatter_marks_the_selected_documents():
    selection = pd.DataFrame({"row_id": [0, 1, 2, 3], "pc1": [0.0, 1.0, 2.0, 3.0], "pc2": [1.0, 0.0, 1.0, 0.0],
                              "cluster": [0, 0, 1, 1], "selected": [True, False, False, True]})
    fig = selection_scatter(selection)
    everyone, chosen = fig.data
    assert len(everyone.x) == 4 and list(chosen.x) == [0.0, 3.0] and chosen.marker.symbol == "diamond"
    assert "4 candidates, 2 clusters, 2 selected" in fig.layout.title.text


def test_comparison_bars_group_strategies_with_error_bars():
    table = pd.DataFrame({"calibration": ["docs"] * 4, "evaluation": ["wiki"] * 4, "scheme": ["W4"] * 4,
                          "samples": [8, 32, 8, 32], "strategy": ["embedding-clusters", "embedding-clusters", "random", "random"],
                          "mean": [29.0, 27.5, 30.0, 28.0], "std": [0.8, 0.2, 1.0, 0.5], "count": [5] * 4, "best": [False] * 4})
    fig = comparison_bars(table, "W4", "wiki", float_perplexity=25.0)
    random, clusters = fig.data
    assert random.name == "random" and list(random.x) == ["n=8", "n=32"] and list(random.error_y.array) == [1.0, 0.5]
    assert list(clusters.y) == [29.0, 27.5] and fig.layout.barmode == "group"
    assert fig.layout.shapes[0].y0 == 25.0
    assert list(random.text) == ["30.00", "28.00"]  # each mean written on its bar
    low, high = fig.layout.yaxis.range  # from just below float to above the highest bar: differences visible
    assert 23.0 < low < 25.0 and 31.0 < high < 32.0


def test_runs_on_different_texts_are_told_apart_and_long_names_wrap():
    layers = pd.DataFrame({"layer": ["model.layers.0.mlp.down_proj"]})
    spec = QuantSpec(WeightSpec("gptq", 4, 128, act_order="dynamic"))
    runs = [QuantReport(spec, 20.0, 25.0, layers, {"evaluation": "docs", "evaluation_tokens": 2040}),
            QuantReport(spec, 40.0, 45.0, layers, {"evaluation": "wiki", "evaluation_tokens": 1020})]
    fig = perplexity_runs(runs)
    bars = [trace for trace in fig.data if trace.type == "bar"]
    assert [trace.name for trace in bars] == ["on docs (2,040 tokens)", "on wiki (1,020 tokens)"]
    assert all("<br>" in label for label in bars[0].x) and fig.layout.xaxis.tickangle == 0


def test_no_sensitivity_means_no_figure():
    layers = pd.DataFrame({"layer": ["model.layers.0.mlp.down_proj"], "seconds": [0.1]})
    assert sensitivity_depth(QuantReport(QuantSpec(WeightSpec("rtn", 4, 128)), 20.0, 22.0, layers, {})) is None


def test_the_rotation_figure_shows_each_layers_ranges_and_errors_both_ways():
    layers = pd.DataFrame({
        "layer": [f"model.layers.{i}.mlp.down_proj" for i in range(3)], "kind": ["Linear"] * 3, "block": [0, 1, 2],
        "channel_ratio_before": [40.0, 8.0, 3.0], "channel_ratio_after": [2.0, 1.5, 1.4],
        "error_unrotated": [0.3, 0.05, 0.02], "error_rotated": [0.1, 0.06, 0.019], "rotated": [True, False, True],
        "absmax_before": [80.0, 9.0, 4.0], "absmax_after": [6.0, 3.0, 2.0], "crest_before": [60.0, 10.0, 4.0],
        "crest_after": [5.0, 4.0, 3.5], "top_share_before": [0.5, 0.1, 0.05], "top_share_after": [0.02, 0.02, 0.02]})
    spec = QuantSpec(WeightSpec("rtn", 4, 128), rotation=RotationSpec(placement="where it helps"))
    fig = rotation_ranges(QuantReport(spec, 20.0, 22.0, layers, {}))
    by_name = {trace.name: trace for trace in fig.data}
    assert list(by_name["unrotated input"].y) == [40.0, 8.0, 3.0] and list(by_name["rotated input"].y) == [2.0, 1.5, 1.4]
    assert list(by_name["rotated error"].y) == [0.1, 0.06, 0.019]
    assert list(by_name["rotated error"].marker.symbol) == ["circle", "circle-open", "circle"]  # the one left unrotated
    assert "2 of 3 layers rotated; 1 left unrotated" in fig.layout.title.text
    assert "|max| 80 → 6" in by_name["unrotated input"].text[0]
    assert rotation_ranges(QuantReport(QuantSpec(WeightSpec("rtn", 4, 128)), 20.0, 22.0, layers.drop(
        columns=["error_rotated"]), {})) is None
    fused = QuantSpec(WeightSpec("rtn", 4, 128), rotation=RotationSpec(placement="none", residual=True))
    fig = rotation_ranges(QuantReport(fused, 20.0, 22.0, layers.drop(columns=["error_rotated", "error_unrotated"]), {}))
    assert [trace.name for trace in fig.data] == ["as loaded input", "turned input"]
    assert list(fig.data[1].y) == [2.0, 1.5, 1.4] and "fell 5.3x, median" in fig.layout.title.text  # 20, 5.3, 2.1
