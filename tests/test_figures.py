"""Figure builders checked on their content through fig.to_dict()."""
import numpy as np
import pandas as pd
import pytest

from engine.figures import bucket_bars, length_histogram


def test_length_histogram_shares_edges_and_axes():
    corpus = np.array([10] * 50 + [100] * 30 + [1000] * 20)
    selected = np.array([11] * 5 + [101] * 5)
    fig = length_histogram(corpus, selected, edges=(64, 128, 2048), prefix_length=1).to_dict()
    corpus_trace, selected_trace = fig["data"]
    assert [t["type"] for t in fig["data"]] == ["scatter", "scatter"]
    assert corpus_trace["name"] == "corpus documents (100)" and selected_trace["name"] == "calibration samples (10)"
    # shares are percentages of each population (the step line repeats the last bin)
    assert sum(corpus_trace["y"][:-1]) == pytest.approx(100.0) and sum(selected_trace["y"][:-1]) == pytest.approx(100.0)
    assert fig["layout"]["xaxis"]["type"] == "log"
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("tokens per sequence")
    assert fig["layout"]["yaxis"]["title"]["text"] == "share (%)"
    assert [shape["x0"] for shape in fig["layout"]["shapes"]] == [64, 128, 2048]
    labels = {a["text"]: a["x"] for a in fig["layout"]["annotations"]}
    assert labels["2,048"] == pytest.approx(np.log10(2048))  # log-axis annotations sit at log10(x)
    assert "corpus vs calibration set" in fig["layout"]["title"]["text"]


def test_length_histogram_counts_documents_as_sequences_with_bos():
    fig = length_histogram(np.array([63]), np.array([64]), prefix_length=1).to_dict()
    corpus_trace, selected_trace = fig["data"]
    assert np.argmax(corpus_trace["y"][:-1]) == np.argmax(selected_trace["y"][:-1])  # 63 + BOS lands with 64


def test_bucket_bars_groups_three_counts_per_bucket():
    table = pd.DataFrame({"bucket": ["1–64", "65–128"], "available": [100, 3], "asked": [5, 5], "selected": [7, 3]})
    fig = bucket_bars(table).to_dict()
    assert [t["name"] for t in fig["data"]] == ["available", "asked", "selected"]
    assert all(t["type"] == "bar" for t in fig["data"]) and fig["layout"]["barmode"] == "group"
    assert list(fig["data"][2]["y"]) == [7, 3] and list(fig["data"][0]["x"]) == ["1–64", "65–128"]
    assert fig["layout"]["yaxis"]["type"] == "log" and fig["layout"]["xaxis"]["title"]["text"].startswith("bucket")


# --- activation statistics figures ---------------------------------------------------------------

@pytest.fixture(scope="module")
def stats_report(tiny_llama):
    import datasets

    from engine.sampling import RandomSpec, build
    from engine.stats import StatsSpec, collect

    texts = [f"{i} " + "calibration text, with some numbers 12345 " * (i + 2) for i in range(8)]
    data = datasets.Dataset.from_dict({"text": texts, "source": [f"s{i}" for i in range(8)], "row_id": list(range(8))})
    calibration = build(data, tiny_llama.tokenizer, RandomSpec(nsamples=8, length=256))
    return collect(tiny_llama, calibration, StatsSpec(outlier_threshold=0.05)), calibration


def test_ranges_across_depth_has_one_point_per_distinct_tensor_and_a_toggle(stats_report):
    from engine.figures import ranges_across_depth

    report, _ = stats_report
    fig = ranges_across_depth(report).to_dict()
    names = [t["name"] for t in fig["data"]]
    assert names == ["|max|", "p99.9 |x|", "p99.99 |x|", "p99.999 |x|", "max", "min", "outlier threshold 0.05"]
    distinct = report.summary[report.summary["shared_with"] == ""]
    assert fig["data"][0]["y"] == distinct["absmax"].tolist() and fig["data"][0]["x"][0] == "0.q_proj"
    assert [b["label"] for b in fig["layout"]["updatemenus"][0]["buttons"]] == ["log", "linear"]
    assert fig["layout"]["yaxis"]["type"] == "log" and "across depth" in fig["layout"]["title"]["text"]
    assert fig["layout"]["xaxis"]["title"]["text"].startswith("layer")


def test_heatmap_rows_are_layers_and_cells_log_absmax(stats_report):
    from engine.figures import channel_heatmap

    report, _ = stats_report
    (heatmap,) = channel_heatmap(report).data  # z: a float array (sent as a typed array, not Python floats)
    distinct = report.summary[report.summary["shared_with"] == ""]
    assert heatmap.type == "heatmap" and heatmap.z.shape == (len(distinct), 37)
    first = report.channels[distinct["key"].iloc[0]]["absmax"]
    assert heatmap.z[0][0] == pytest.approx(float(np.log10(first[0])), rel=1e-6)
    assert np.isnan(heatmap.z[0][36])  # a 32-channel input padded to the widest (37)
    (pooled,) = channel_heatmap(report, max_columns=10).data  # the report's overview
    assert list(pooled.x) == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36] and pooled.z.shape[1] == 10
    assert pooled.z[0][1] == pytest.approx(float(np.log10(first[4:8].max())), rel=1e-6)  # an outlier stays visible
    assert np.isnan(pooled.z[0][9])  # channels 36.. exist only in the wider inputs


def test_distribution_boxes_use_histogram_quantiles_and_exact_max(stats_report):
    from engine.figures import layer_distributions

    report, _ = stats_report
    data = layer_distributions(report).to_dict()["data"]
    boxes = [t for t in data if t["type"] == "box"]
    marks = [t for t in data if t["type"] == "scatter"]
    assert len(boxes) == len(marks) == (report.summary["shared_with"] == "").sum()
    assert all(b["q1"][0] <= b["median"][0] <= b["q3"][0] <= b["upperfence"][0] for b in boxes)
    assert all(m["y"][0] >= b["upperfence"][0] for b, m in zip(boxes, marks))


def test_layer_channels_and_outliers_and_attribution(stats_report, tiny_llama):
    from engine.figures import attribution_html, layer_channels, outlier_table
    from engine.stats.attribution import attribute

    report, calibration = stats_report
    key = "model.layers.1.mlp.down_proj"
    fig = layer_channels(report, key).to_dict()
    assert fig["data"][0]["type"] == "bar" and len(fig["data"][0]["y"]) == 37
    assert [t["name"] for t in fig["data"][1:]] == ["p99.9", "p99.99", "p99.999", "outlier threshold 0.05"]
    table = outlier_table(report, top=5)
    assert list(table.columns) == ["layer", "channel", "absmax", "min", "max", "row", "position", "key"]
    assert table["absmax"].is_monotonic_decreasing and (table["absmax"] > 0.05).all()
    found = attribute(report, key, calibration, tiny_llama.tokenizer)
    assert found.value == pytest.approx(float(report.channels[key]["absmax"].max()))
    page = attribution_html(found)
    assert "<mark" in page and html_escaped(found.token) in page and key in page


def html_escaped(text):
    import html

    return html.escape(text).replace("\n", "⏎<br>")


# --- Hessian figures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hessian_report(tiny_llama, stats_report):
    from engine.stats.hessian_report import collect_hessians

    _, calibration = stats_report
    return collect_hessians(tiny_llama, calibration)


def test_hessian_depth_traces_axes_and_rank_marks(hessian_report):
    from engine.figures import hessian_depth

    fig = hessian_depth(hessian_report).to_dict()
    names = [t["name"] for t in fig["data"]]
    assert names[:2] == ["trace", "condition number"]
    distinct = hessian_report.diagnostics[hessian_report.diagnostics["shared_with"] == ""]
    assert fig["data"][0]["y"] == distinct["trace"].tolist() and len(fig["data"][0]["x"]) == 8
    deficient = (distinct["rank"] < distinct["channels"]).sum()
    assert ("rank-deficient" in names) == bool(deficient)
    assert fig["layout"]["yaxis"]["type"] == "log" and fig["layout"]["yaxis2"]["type"] == "log"
    assert fig["layout"]["yaxis2"]["title"]["text"] == "condition number (log)"
    for axis in ("yaxis", "yaxis2"):  # decades only, powers of ten on both: never "1T" beside "10^15"
        assert fig["layout"][axis]["dtick"] == 1 and fig["layout"][axis]["exponentformat"] == "power"


def test_eigen_spectrum_is_relative_and_descending(hessian_report):
    from engine.figures import eigen_spectrum

    fig = eigen_spectrum(hessian_report, "model.layers.0.self_attn.k_proj").to_dict()
    values = fig["data"][0]["y"]
    assert values[0] == pytest.approx(1.0) and values == sorted(values, reverse=True) and len(values) == 32
    assert "rank" in fig["layout"]["title"]["text"] and fig["layout"]["yaxis"]["type"] == "log"
    assert fig["layout"]["shapes"][0]["x0"] == int(hessian_report.diagnostics.iloc[1]["rank"])


def test_diagonal_heatmap_holds_log_diagonals(hessian_report):
    from engine.figures import diagonal_heatmap

    (heatmap,) = diagonal_heatmap(hessian_report).data
    first = hessian_report.hessians["model.layers.0.self_attn.q_proj"]
    assert heatmap.z[0][3] == pytest.approx(float(np.log10(first[3, 3])), rel=1e-6)
    assert len(heatmap.z) == 8 and heatmap.colorbar.title.text == "log10 H_ii"
    (pooled,) = diagonal_heatmap(hessian_report, max_columns=8).data
    assert pooled.z[0][0] == pytest.approx(float(np.log10(first.diagonal()[:4].max())), rel=1e-6)


def test_percent_log_axes_keep_their_digits():
    import plotly.graph_objects as go

    from engine.figures.style import log_axis

    layout = log_axis(go.Figure(go.Scatter(x=[1, 2], y=[1e-5, 0.3])), percent=True).to_dict()["layout"]["yaxis"]
    assert layout["tickformat"] == ".2~p" and layout["dtick"] == 1  # 0.001% shows as 0.001%, not 0%
    assert "showticklabels" not in layout["minor"]  # minor ticks carry no labels to crowd the axis


def test_expert_heatmap_marks_the_experts_under_the_threshold_and_draws_the_line():
    from engine.figures.coverage import expert_token_heatmap

    counts = np.array([[0, 5, 40, 100], [12, 9, 300, 1]])
    fig = expert_token_heatmap(counts, ["block 0", "block 1"], threshold=10)
    heat, marks, curve = fig.data
    assert np.array_equal(np.asarray(heat.z), counts) and list(heat.y) == ["block 0", "block 1"]
    assert sorted(zip(marks.y, marks.x)) == [("block 0", 0), ("block 0", 1), ("block 1", 1), ("block 1", 3)]
    assert list(curve.customdata) == sorted(counts.ravel().tolist()) and curve.y[0] == 0.5  # 0 drawn at 0.5
    assert [shape.y0 for shape in fig.layout.shapes] == [10]
    assert "4 of 8 experts under 10 tokens, 1 with none" in fig.layout.title.text
    layout = fig.layout  # only the sorted counts' token axis is logarithmic; the experts' axes stay linear
    assert layout.yaxis2.type == "log" and layout.yaxis2.title.text.startswith("tokens")
    assert layout.xaxis.type != "log" and layout.xaxis2.type != "log" and layout.yaxis.type != "log"
    assert layout.xaxis.title.text == "expert" and layout.xaxis2.title.text == "experts, fewest tokens first"
    label = next(note for note in layout.annotations if note.text == "10 tokens")
    assert label.yref == "y2" and label.y == 1.0  # log axis: the annotation sits at the exponent, on the line


def test_outlier_coverage_stacks_reached_and_missed_channels_per_block():
    from engine.figures.coverage import outlier_coverage

    table = pd.DataFrame({"key": ["model.layers.0.a", "model.layers.0.b", "model.layers.1.a", "model.layers.1.mlp.experts"],
                          "kind": ["channel", "channel", "channel", "expert"], "targets": [4, 2, 5, 8], "covered": [3, 2, 1, 8]})
    fig = outlier_coverage(table, lambda key: int(key.split(".")[2]))
    reached, missed = fig.data
    assert list(reached.y) == [5, 1] and list(missed.y) == [1, 4] and list(reached.x) == ["0", "1"]
    assert "6 of 11 (55%)" in fig.layout.title.text and fig.layout.barmode == "stack"
