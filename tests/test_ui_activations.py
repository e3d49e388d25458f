"""The Activation ranges tab's handlers, called as functions."""
import gradio as gr
import pandas as pd
import pytest

from engine import SpecError
from tests.test_ui import FakeProgress, _load
from tests.test_ui_dataset import _build
from ui.state import Session
from ui.tabs.activations import (
    collect_statistics,
    parse_percentiles,
    pick_from_table,
    show_layer,
    stats_spec_from_widgets,
)

WIDGETS = [["Linear", "Conv1D"], "", False, "inputs", "99.9, 99.99", True, 0.05, 4]


@pytest.fixture(scope="module")
def built_session():
    (_, _, _, _, session), _ = _load(builtin="python-docs")
    *_, session = _build(session, nsamples=8, edges="64, 128, 256")
    return session


def test_spec_from_widgets_and_bad_percentiles():
    spec = stats_spec_from_widgets(*WIDGETS)
    assert spec.layer_types == ("Linear", "Conv1D") and spec.percentiles == (99.9, 99.99) and spec.batch_size == 4
    with pytest.raises(SpecError, match="numbers separated by commas"):
        parse_percentiles("99.9, high")
    with pytest.raises(SpecError, match="not a valid regular expression"):
        stats_spec_from_widgets(WIDGETS[0], "layers.(", *WIDGETS[2:])
    with pytest.raises(SpecError, match="layer_types"):
        stats_spec_from_widgets([], *WIDGETS[1:])


def test_collect_needs_a_calibration_set():
    with pytest.raises(gr.Error, match="Dataset tab first"):
        collect_statistics(*WIDGETS, Session(), progress=FakeProgress())


def test_collect_fills_every_view_and_drills_into_the_top_layer(built_session):
    status, ranges, table, outliers, heatmap, distributions, layer, channels, attribution, session = collect_statistics(
        *WIDGETS, built_session, progress=FakeProgress())
    assert status.startswith("**Collected** 14 tensors (8 distinct, 6 reuse another layer's input) over 8 samples")
    assert len(table) == 14 and table["layer"].iloc[0] == "0.q_proj" and table["shared_with"].iloc[1] == "0.q_proj"
    assert {"p99.9", "p99.99"} <= set(table.columns) and (outliers["absmax"] > 0.05).all()
    assert layer["value"] == session.stats.summary.sort_values("absmax", ascending=False)["key"].iloc[0]
    assert len(layer["choices"]) == 14 and "<mark" in attribution and channels.data[0].type == "bar"
    assert len(ranges.data) == 6 and heatmap.data[0].type == "heatmap" and distributions.data[0].type == "box"


def test_filtered_collection_and_table_click(built_session):
    *_, session = collect_statistics(WIDGETS[0], r"layers\.1\.mlp", *WIDGETS[2:], built_session, progress=FakeProgress())
    assert list(session.stats.summary["module"]) == ["gate_proj", "up_proj", "down_proj"]
    table = pd.DataFrame({"key": ["a", "model.layers.1.mlp.down_proj"]})
    event = gr.SelectData(target=None, data={"index": [1, 0], "value": "x"})
    assert pick_from_table(table, event)["value"] == "model.layers.1.mlp.down_proj"
    channels, attribution = show_layer("model.layers.1.mlp.down_proj", session)
    assert "model.layers.1.mlp.down_proj" in attribution


def test_nothing_matching_the_filter_is_a_clear_error(built_session):
    with pytest.raises(gr.Error, match="No layer matches"):
        collect_statistics(WIDGETS[0], "no_such_layer", *WIDGETS[2:], built_session, progress=FakeProgress())
