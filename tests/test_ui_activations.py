"""The Activation ranges tab's handlers, called as functions."""
import gradio as gr
import pandas as pd
import pytest

from engine import SpecError
from engine.errors import CalibscopeError
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.parsing import parse_percentiles
from ui.state import Session
from ui.tabs.activations import StatsForm, collect_statistics, layer_view, pick_from_table

FORM = StatsForm(layer_types=["Linear", "Conv1D"], percentiles="99.9, 99.99", threshold=0.05, batch_size=4)


def collect(session, **fields):
    return collect_statistics(StatsForm(**{**FORM.__dict__, **fields}), session, CONTEXT, Recorder())


@pytest.fixture(scope="module")
def built_session():
    session = load(builtin_name="python-docs")["session"]
    return build(session, nsamples=8, edges="64, 128, 256")["session"]


def test_spec_from_widgets_and_bad_percentiles():
    spec = FORM.spec()
    assert spec.layer_types == ("Linear", "Conv1D") and spec.percentiles == (99.9, 99.99) and spec.batch_size == 4
    with pytest.raises(SpecError, match="numbers separated by commas"):
        parse_percentiles("99.9, high")
    with pytest.raises(SpecError, match="not a valid regular expression"):
        StatsForm(pattern="layers.(").spec()
    with pytest.raises(SpecError, match="layer_types"):
        StatsForm(layer_types=[]).spec()


def test_collect_needs_a_calibration_set():
    with pytest.raises(CalibscopeError, match="Dataset tab first"):
        collect(Session())


def test_collect_fills_every_view_and_drills_into_the_top_layer(built_session):
    result = collect(built_session)
    session, table = result["session"], result["table"]
    assert result["status"].startswith("**Collected** 14 tensors (8 distinct, 6 reuse another layer's input) over 8 samples")
    assert len(table) == 14 and table["layer"].iloc[0] == "0.q_proj" and table["input of"].iloc[1] == "0.q_proj"
    assert isinstance(table["absmax"].iloc[0], str) and "outliers" in table  # formatted, short headers
    assert {"p99.9", "p99.99"} <= set(table.columns) and (result["outliers"]["absmax"] > 0.05).all()
    assert result["layer"]["value"] == session.stats.summary.sort_values("absmax", ascending=False)["key"].iloc[0]
    assert len(result["layer"]["choices"]) == 14 and "<mark" in result["attribution"]
    assert result["channels"].data[0].type == "bar" and len(result["ranges"].data) == 6
    assert result["heatmap"].data[0].type == "heatmap" and result["distributions"].data[0].type == "box"


def test_filtered_collection_and_table_click(built_session):
    session = collect(built_session, pattern=r"layers\.1\.mlp")["session"]
    assert list(session.stats.summary["module"]) == ["gate_proj", "up_proj", "down_proj"]
    table = pd.DataFrame({"key": ["a", "model.layers.1.mlp.down_proj"]})
    event = gr.SelectData(target=None, data={"index": [1, 0], "value": "x"})
    assert pick_from_table(table, event)["value"] == "model.layers.1.mlp.down_proj"
    _channels, attribution = layer_view(CONTEXT)("model.layers.1.mlp.down_proj", session)
    assert "model.layers.1.mlp.down_proj" in attribution


def test_nothing_matching_the_filter_is_a_clear_error(built_session):
    with pytest.raises(CalibscopeError, match="No layer matches"):
        collect(built_session, pattern="no_such_layer")
