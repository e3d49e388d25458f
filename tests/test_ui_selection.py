"""The Sensitivity and Compare tabs and the selection strategies in the Dataset tab, on the tiny model."""
import gradio as gr
import pytest

from tests.test_ui import FakeProgress, _load
from tests.test_ui_dataset import _build
from ui.limits import Limits
from ui.state import Session
from ui.tabs.compare import run_comparison, show_scheme
from ui.tabs.quantize import HELD_OUT
from ui.tabs.sensitivity import parse_counts, run_sweep

HELD = next(iter(HELD_OUT))


@pytest.fixture(scope="module")
def loaded_session():
    (_, _, _, _, session), _ = _load(builtin="python-docs")
    return session


def test_dataset_tab_builds_cluster_selections_and_shows_them(loaded_session):
    status, _, second, summary, _, _, session = _build(loaded_session, strategy="embedding-clusters", nsamples=5, length=96)
    assert status.startswith("**Built** 5 samples") and "k-means clusters" in status
    assert second["visible"] and second["value"].data[1].name == "selected" and len(second["value"].data[1].x) == 5
    _, _, second, *_ = _build(loaded_session, strategy="self-generated", nsamples=3, length=24)
    assert not second["visible"]


def test_sensitivity_sweep_reports_when_the_set_is_enough(loaded_session):
    *_, session = _build(loaded_session, strategy="random", nsamples=8, length=64)
    status, curves, table = run_sweep("", 2, 99.99, True, 4, session, progress=FakeProgress())
    assert status.startswith("**Swept** 8 samples, 2 shuffles") and "Hessian (Frobenius)" in status
    assert list(table["samples"]) == [1, 2, 4, 8] and table.columns.tolist()[1:] == ["|max|", "percentile", "Hessian (Frobenius)"]
    assert table.iloc[-1, 1] == "0.00% (0.00%–0.00%)"
    assert [t.name for t in curves.data if t.mode == "lines+markers"] == ["|max|", "percentile", "Hessian (Frobenius)"]
    with pytest.raises(gr.Error, match="whole numbers"):
        run_sweep("1, two", 2, 99.99, True, 4, session, progress=FakeProgress())
    with pytest.raises(gr.Error, match="a session may hold"):
        run_sweep("", 2, 99.99, True, 4, session, progress=FakeProgress(), limits=Limits(shared=True, max_hessian_mb=0.001))
    assert parse_counts("1, 4;16") == (1, 4, 16)


def test_compare_measures_every_cell_and_keeps_the_runs(loaded_session):
    status, bars, table, scheme, session = run_comparison(
        ["random", "embedding-clusters"], 2, "3", 48, ["W4 g128 RTN", "W8A8 static (p99.99)"], HELD, 2, loaded_session,
        progress=FakeProgress())
    assert status.startswith("**Compared** 2 strategies x 2 seeds x 1 counts (8 measurements)")
    assert len(table) == 4 and set(table["count"]) == {2} and scheme["value"] == "W4 g128 RTN"
    assert {trace.name for trace in bars.data} == {"random", "embedding-clusters"}
    assert len(session.comparison) == 8
    assert show_scheme("W8A8 static (p99.99)", session).layout.title.text.startswith("W8A8 static (p99.99) on")
    with pytest.raises(gr.Error, match="at most 12 per request"):
        run_comparison(["random"], 20, "3", 48, ["W4 g128 RTN"], HELD, 2, loaded_session, progress=FakeProgress(),
                       limits=Limits.shared_space())
    with pytest.raises(gr.Error, match="Load a model"):
        run_comparison(["random"], 1, "3", 48, ["W4 g128 RTN"], HELD, 2, Session(), progress=FakeProgress())
