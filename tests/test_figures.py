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
