"""The Quantize tab's handler, called as a function on the tiny model."""
import gradio as gr
import pytest

from engine.quant import PRESETS
from tests.test_ui import FakeProgress, _load
from tests.test_ui_dataset import _build
from ui.limits import Limits
from ui.state import Session
from ui.tabs.activations import collect_statistics
from ui.tabs.hessians import compute_hessians
from ui.tabs.quantize import (
    CUSTOM,
    FLOAT_PERPLEXITY,
    HELD_OUT,
    UPLOADED,
    make_handler,
    preset_widgets,
)

HELD = next(iter(HELD_OUT))
run_quantization = make_handler(Limits())
shared_run = make_handler(Limits.shared_space())


@pytest.fixture(scope="module")
def calibrated_session():
    (_, _, _, _, session), _ = _load(builtin="python-docs")
    *_, session = _build(session, nsamples=6, edges="64, 128")
    *_, session = compute_hessians("", "float32", "model", 4, session, progress=FakeProgress())
    *_, session = collect_statistics(["Linear"], "", False, "inputs", "99.9, 99.99", True, 6.0, 4, session,
                                     progress=FakeProgress())
    return session


def _run(session, preset="W4 g128 GPTQ", sensitivity="cheap", source=HELD, upload=None, length=64, windows=3, handler=run_quantization):
    return handler(*preset_widgets(preset), source, upload, length, windows, sensitivity, session, progress=FakeProgress())


def test_quantize_needs_a_set_and_what_the_scheme_uses(calibrated_session):
    with pytest.raises(gr.Error, match="Dataset tab first"):
        _run(Session())
    no_hessians = calibrated_session.with_calibration(calibrated_session.calibration)
    with pytest.raises(gr.Error, match="Hessians tab first"):
        _run(no_hessians)
    with pytest.raises(gr.Error, match="statistics"):
        _run(no_hessians, preset="W8A8 static (p99.99)")
    with pytest.raises(gr.Error, match="Upload a held-out"):
        _run(calibrated_session, source=UPLOADED)
    with pytest.raises(gr.Error, match="allowed on this shared Space"):
        _run(calibrated_session, windows=10_000, handler=shared_run)


def test_quantize_reports_perplexities_runs_and_sensitivity(calibrated_session):
    status, summary, runs, depth, table, session = _run(calibrated_session)
    assert status.startswith("**W4 g128 GPTQ**: perplexity ") and "python-docs (held-out 10%)" in status
    assert list(summary.iloc[:, 0])[:4] == ["Scheme", "Float perplexity", "Quantized perplexity", "Gap"]
    assert len(table) == 14 and table["output_error"].is_monotonic_decreasing
    assert [trace.name for trace in depth.data][:1] == ["weights: relative output error (calibration tokens)"]
    assert runs.data[0].x == ("#1 W4 g128 GPTQ",)
    float_ppl = session.quantization.float_perplexity
    assert float_ppl in [FLOAT_PERPLEXITY.peek(key) for key in list(FLOAT_PERPLEXITY._items)]
    *_, depth2, table2, session2 = _run(session, preset="W8A8 static (MSE)", sensitivity="thorough")
    assert session2.quantization.float_perplexity == float_ppl  # reused, the same evaluation windows
    assert "perplexity_change" in table2 and depth2.data[0].type == "bar"
    assert [run["label"] for run in session2.quant_runs] == ["#1 W4 g128 GPTQ", "#2 W8 per-channel RTN + A8 static per-tensor mse"]


def test_presets_fill_the_details_and_custom_leaves_them():
    assert preset_widgets("W3 g128 RTN")[:3] == ["rtn", 3, "128"]
    assert all(set(preset_widgets(name)) for name in PRESETS)
    assert preset_widgets(CUSTOM)[0] == gr.update()
