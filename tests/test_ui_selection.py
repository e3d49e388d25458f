"""The Sensitivity and Compare tabs and the selection strategies in the Dataset tab, on the tiny model."""
import pytest
import torch

from engine.errors import CalibscopeError, SpecError
from engine.experiments import HELD_OUT
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.context import AppContext
from ui.limits import Limits
from ui.parsing import parse_counts
from ui.state import Session
from ui.tabs.compare import CompareForm, run_comparison, show_scheme
from ui.tabs.hessians import HessianForm, compute_hessians
from ui.tabs.sensitivity import SweepForm, run_sweep

HELD = next(iter(HELD_OUT))


@pytest.fixture(scope="module")
def loaded_session():
    return load(builtin_name="python-docs")["session"]


def test_dataset_tab_builds_cluster_selections_and_shows_them(loaded_session):
    result = build(loaded_session, strategy="embedding-clusters", nsamples=5, length=96)
    second = result["second_plot"]
    assert result["status"].startswith("**Built** 5 samples") and "k-means clusters" in result["status"]
    assert second["visible"] and second["value"].data[1].name == "selected" and len(second["value"].data[1].x) == 5
    assert not build(loaded_session, strategy="self-generated", nsamples=3, length=24)["second_plot"]["visible"]


def sweep(session, context=CONTEXT, **fields):
    return run_sweep(SweepForm(**{"shuffles": 2, "batch_size": 4, **fields}), session, context, Recorder())


def test_sensitivity_sweep_reports_when_the_set_is_enough(loaded_session):
    session = build(loaded_session, strategy="random", nsamples=8, length=64)["session"]
    result = sweep(session)
    status, table = result["status"], result["table"]
    assert status.startswith("**Swept** 8 samples, 2 shuffles") and "Hessian (Frobenius)" in status
    metrics = ["|max| (= an int8 / FP8 static minmax scale)", "percentile", "Hessian (Frobenius)", "NVFP4 global scale, minmax",
               "NVFP4 global scale, headroom", "AWQ's mean |x| per channel"]  # the tiny model's 16-wide inputs have NVFP4 blocks
    assert list(table["samples"]) == [1, 2, 4, 8] and table.columns.tolist()[1:] == metrics
    assert table.iloc[-1, 1] == "0.00% (0.00%–0.00%)"
    assert [t.name for t in result["curves"].data if t.mode == "lines+markers"] == metrics
    assert ("NVFP4 global scale, headroom within 5% of the full set" in status
            or "NVFP4 global scale, headroom still moving" in status)
    assert "AWQ's mean |x| per channel within 5%" in status or "AWQ's mean |x| per channel still moving" in status
    assert result["session"].sweep is not None and "diagnoses them without another pass" in status
    # the Hessians tab takes the sweep's whole-set sums: the same report a collection gives, no forward
    from_sweep = compute_hessians(HessianForm(batch_size=4), result["session"], CONTEXT, Recorder())
    assert "summed by the Sensitivity sweep's pass" in from_sweep["status"]
    collected = compute_hessians(HessianForm(batch_size=4), session, CONTEXT, Recorder())["session"].hessians
    for key, hessian in collected.hessians.items():
        torch.testing.assert_close(from_sweep["session"].hessians.hessians[key], hessian, rtol=1e-5, atol=1e-6)
    with pytest.raises(SpecError, match="separated by commas"):
        sweep(session, counts="1, two")
    tiny_cap = AppContext(limits=Limits(shared=True, max_hessian_mb=0.001), models=CONTEXT.models)
    with pytest.raises(CalibscopeError, match="a session may hold"):
        sweep(session, context=tiny_cap)
    assert parse_counts("1, 4;16") == (1, 4, 16)


def compare(session, context=CONTEXT, **fields):
    form = CompareForm(**{"strategies": ["random", "embedding-clusters"], "seeds": 2, "counts": "3", "length": 48,
                          "schemes": ["W4 g128 RTN", "W8A8 static (p99.99)"], "source": HELD, "windows": 2, **fields})
    return run_comparison(form, session, context, Recorder())


def test_compare_measures_every_cell_and_keeps_the_runs(loaded_session):
    result = compare(loaded_session)
    table, session = result["table"], result["session"]
    assert result["status"].startswith("**Compared** 2 strategies x 2 seeds x 1 count (8 measurements)")
    assert len(table) == 4 and set(table["seeds"]) == {2} and result["scheme"]["value"] == "W4 g128 RTN"
    assert set(table["best"]) <= {"✓", ""} and (table["best"] == "✓").sum() >= 2  # at least one best per scheme (ties share it)
    assert {trace.name for trace in result["bars"].data} == {"random", "embedding-clusters"}
    assert len(session.comparison) == 8
    assert show_scheme("W8A8 static (p99.99)", session).layout.title.text.startswith("W8A8 static (p99.99) on")
    shared = AppContext(limits=Limits.shared_space(), models=CONTEXT.models)
    with pytest.raises(CalibscopeError, match="at most 12 per request"):
        compare(loaded_session, context=shared, strategies=["random"], seeds=20, schemes=["W4 g128 RTN"])
    with pytest.raises(CalibscopeError, match="Load a model"):
        compare(Session(), strategies=["random"], seeds=1)
    with pytest.raises(CalibscopeError, match="at least one strategy"):
        compare(loaded_session, strategies=[])


def test_one_seed_says_it_has_no_spread(loaded_session):
    result = compare(loaded_session, strategies=["random"], seeds=1, schemes=["W4 g128 RTN"])
    assert "1 seed x" in result["status"] and "± n/a" in result["status"] and "One seed gives no spread" in result["status"]
    assert result["table"]["std"].iloc[0] == "" and not result["bars"].data[0].error_y.visible
