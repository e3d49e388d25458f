"""The Coverage tab's handler, called as a function, on a dense and an MoE tiny model."""
import pytest

from engine.errors import CalibscopeError
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.state import Session
from ui.tabs.coverage import CoverageForm, measure


def test_measuring_needs_a_set_and_sensible_settings():
    with pytest.raises(CalibscopeError):
        measure(CoverageForm(), Session(), CONTEXT, Recorder())


def test_dense_model_coverage_says_how_many_outliers_the_set_reaches():
    session = build(load(builtin_name="python-docs")["session"], nsamples=6, edges="64, 128")["session"]
    too_strict = measure(CoverageForm(pool=12, outlier_ratio=50), session, CONTEXT, Recorder())
    assert "no outlier channel to cover" in too_strict["status"]
    result = measure(CoverageForm(pool=12, outlier_ratio=1.5), session, CONTEXT, Recorder())  # a random tiny model: mild outliers
    table = result["table"]
    reached, total = table["reached"].astype(int).sum(), table["outliers"].astype(int).sum()
    assert f"**{reached:,} of {total:,} outlier channels**" in result["status"] and total > 0
    assert "reach 90% of their maximum over this set and 12 random corpus documents" in result["status"]
    bars = result["coverage"].data
    assert sum(bars[0].y) == reached and sum(bars[0].y) + sum(bars[1].y) == total
    assert result["experts"] == {"__type__": "update", "visible": False} or result["experts"]["visible"] is False
    with pytest.raises(CalibscopeError, match="reach must be"):
        measure(CoverageForm(fraction=1.5), session, CONTEXT, Recorder())


def test_moe_model_coverage_adds_the_experts_heat_map_and_hessians():
    session = build(load(model="tiny-random-qwen3-moe", builtin_name="python-docs")["session"], nsamples=4,
                    edges="32, 64")["session"]
    result = measure(CoverageForm(pool=4, under_calibrated=40), session, CONTEXT, Recorder())
    heat = result["experts"].data[0]
    assert heat.type == "heatmap" and len(heat.z) == 2 and len(heat.z[0]) == 4  # 2 blocks x 4 experts
    assert "MoE:" in result["status"]
    assert list(result["expert_table"]["expert"]) == [0, 1, 2, 3, 0, 1, 2, 3]


def test_the_dataset_tab_builds_a_coverage_set_with_the_model():
    result = build(load(builtin_name="python-docs")["session"], strategy="coverage", nsamples=4, length=64)
    calibration = result["session"].calibration
    assert len(calibration) == 4 and calibration.manifest.strategy == "coverage"
    assert any("outlier channels" in note for note in calibration.manifest.notes)
