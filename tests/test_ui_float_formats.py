"""The Activation ranges tab's FP8 and NVFP4 section: what each method would set, from the session's statistics."""
import pytest

from engine.errors import CalibscopeError
from tests.test_ui_activations import FORM as STATS_FORM
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.sections.float_formats import FormatsForm, measure_formats
from ui.state import Session
from ui.tabs.activations import collect_statistics


def test_the_section_reads_the_statistics_and_says_what_fp8_and_nvfp4_would_set():
    with pytest.raises(CalibscopeError, match="Activation ranges"):
        measure_formats(FormatsForm(), Session(), CONTEXT, Recorder())
    session = build(load(builtin_name="python-docs")["session"], nsamples=6, edges="64, 128")["session"]
    session = collect_statistics(STATS_FORM, session, CONTEXT, Recorder())["session"]
    result = measure_formats(FormatsForm(), session, CONTEXT, Recorder())
    table = result["table"]
    assert {"layer", "FP8 entropy", "FP8 MSE", "NVFP4 headroom", "block spread", "beyond e4m3"} <= set(table.columns)
    # the tiny model's 16-wide inputs have NVFP4 blocks, its 37-wide ones none: their cells stay empty
    assert table["NVFP4 headroom"].notna().any() and "FP8 static ranges: entropy keeps" in result["status"]
    figure = result["figure"]
    names = {trace.name for trace in figure.data}
    assert {"FP8 range, entropy", "FP8 range, MSE", "NVFP4 amax, headroom", "NVFP4 blocks' spread"} <= names
