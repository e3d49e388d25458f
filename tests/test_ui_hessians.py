"""The Hessians tab's handlers, called as functions."""
import gradio as gr
import pytest

from tests.test_ui import FakeProgress, _load
from tests.test_ui_dataset import _build
from ui.state import Session
from ui.tabs.hessians import compute_hessians, show_spectrum


@pytest.fixture(scope="module")
def built_session():
    (_, _, _, _, session), _ = _load(builtin="python-docs")
    *_, session = _build(session, nsamples=6, edges="64, 128")
    return session


def test_hessians_need_a_calibration_set():
    with pytest.raises(gr.Error, match="Dataset tab first"):
        compute_hessians("", "float32", "model", 4, Session(), progress=FakeProgress())


def test_hessians_fill_every_view_and_open_on_the_worst_layer(built_session):
    status, depth, table, layer, spectrum, diagonals, session = compute_hessians(
        "", "float32", "model", 4, built_session, progress=FakeProgress())
    assert status.startswith("**Collected** Hessians of 14 layers (8 distinct inputs:")
    assert "instead of" in status and ("of 8 " in status or "full rank" in status)
    assert len(table) == 14 and table["name"].iloc[0] == "0.q_proj"
    worst = table.sort_values(["rank", "condition_number"], ascending=[True, False])["layer"].iloc[0]
    assert layer["value"] == worst and spectrum.data[0].type == "scatter" and diagonals.data[0].type == "heatmap"
    assert session.hessians is not None and depth.data[0].name == "trace"
    assert show_spectrum("model.layers.1.mlp.down_proj", session).data[0].type == "scatter"


def test_bad_hessian_settings_are_messages(built_session):
    with pytest.raises(gr.Error, match="regular expression"):
        compute_hessians("layers.(", "float32", "model", 4, built_session, progress=FakeProgress())
    with pytest.raises(gr.Error, match="No layer matches"):
        compute_hessians("nothing_like_this", "float32", "model", 4, built_session, progress=FakeProgress())
