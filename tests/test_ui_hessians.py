"""The Hessians tab's handlers, called as functions."""
import pytest

from engine.errors import CalibscopeError, SpecError
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.state import Session
from ui.tabs.hessians import HessianForm, compute_hessians, show_spectrum


def hessians(session, context=CONTEXT, **fields):
    return compute_hessians(HessianForm(**{"batch_size": 4, **fields}), session, context, Recorder())


@pytest.fixture(scope="module")
def built_session():
    session = load(builtin_name="python-docs")["session"]
    return build(session, nsamples=6, edges="64, 128")["session"]


def test_hessians_need_a_calibration_set():
    with pytest.raises(CalibscopeError, match="Dataset tab first"):
        hessians(Session())


def test_hessians_fill_every_view_and_open_on_the_worst_layer(built_session):
    result = hessians(built_session)
    status, table, session = result["status"], result["table"], result["session"]
    assert status.startswith("**Collected** Hessians of 14 layers (8 distinct inputs:")
    assert "instead of" in status and ("of 8 " in status or "full rank" in status)
    assert len(table) == 14 and table["name"].iloc[0] == "0.q_proj"
    worst = session.hessians.diagnostics.sort_values(["rank", "condition_number"], ascending=[True, False])["layer"].iloc[0]
    assert list(table.columns) == ["name", "channels", "tokens", "rank", "dead", "condition", "min damping", "trace",
                                   "finding", "input of", "diagnosis"]
    assert table["condition"].str.contains("e+").all() and (table["min damping"] != "").all()
    assert result["layer"]["value"] == worst and result["spectrum"].data[0].type == "scatter"
    assert result["diagonals"].data[0].type == "heatmap"
    assert session.hessians is not None and result["depth"].data[0].name == "trace"
    assert show_spectrum("model.layers.1.mlp.down_proj", session).data[0].type == "scatter"


def test_bad_hessian_settings_are_messages(built_session):
    with pytest.raises(SpecError, match="regular expression"):
        hessians(built_session, pattern="layers.(")
    with pytest.raises(CalibscopeError, match="No layer matches"):
        hessians(built_session, pattern="nothing_like_this")


def test_the_memory_plan_is_shown_before_a_run(built_session):
    from ui.tabs.hessians import plan_view

    text = plan_view(CONTEXT)(built_session, "", "float32", "model", 4)
    assert text.startswith("**Memory plan: whole-model**") and "| accumulators, every layer |" in text
    assert plan_view(CONTEXT)(Session(), "", "float32", "model", 4) == ""
    assert "not a valid regular expression" in plan_view(CONTEXT)(built_session, "layers.(", "float32", "model", 4)
