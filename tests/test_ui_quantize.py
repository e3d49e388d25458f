"""The Quantize tab's handler, called as a function on the tiny model."""
from dataclasses import replace

import gradio as gr
import pytest

from engine.errors import CalibscopeError
from engine.experiments import HELD_OUT, UPLOADED
from engine.figures.stats import short_name
from engine.quant import PRESETS
from tests.test_ui_activations import FORM as STATS_FORM
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.context import AppContext
from ui.limits import Limits
from ui.state import Session
from ui.tabs.activations import collect_statistics
from ui.tabs.hessians import HessianForm, compute_hessians
from ui.tabs.quantize import (
    CUSTOM,
    EXPERT_POLICIES,
    FUSED,
    SCHEME_WIDGETS,
    QuantizeForm,
    preset_widgets,
    run_quantization,
)

HELD = next(iter(HELD_OUT))


@pytest.fixture(scope="module")
def calibrated_session():
    session = build(load(builtin_name="python-docs")["session"], nsamples=6, edges="64, 128")["session"]
    session = compute_hessians(HessianForm(batch_size=4), session, CONTEXT, Recorder())["session"]
    return collect_statistics(STATS_FORM, session, CONTEXT, Recorder())["session"]


def quantize(session, preset="W4 g128 GPTQ", context=CONTEXT, **fields):
    scheme = dict(zip(SCHEME_WIDGETS, preset_widgets(preset)))
    form = QuantizeForm(**{**scheme, "source": HELD, "length": 64, "windows": 3, **fields})
    return run_quantization(form, session, context, Recorder())


def test_quantize_needs_a_set_and_what_the_scheme_uses(calibrated_session):
    with pytest.raises(CalibscopeError, match="Dataset tab first"):
        quantize(Session())
    no_hessians = calibrated_session.with_calibration(calibrated_session.calibration)
    with pytest.raises(CalibscopeError, match="collect Hessians in the Hessians tab"):
        quantize(no_hessians)
    with pytest.raises(CalibscopeError, match="statistics"):
        quantize(no_hessians, preset="W8A8 static (p99.99)")
    with pytest.raises(CalibscopeError, match="Upload a held-out"):
        quantize(calibrated_session, source=UPLOADED)
    shared = AppContext(limits=Limits.shared_space(), models=CONTEXT.models)
    with pytest.raises(CalibscopeError, match="allowed on this shared Space"):
        quantize(calibrated_session, windows=10_000, context=shared)


def test_sequential_gptq_runs_its_own_pass_and_says_so(calibrated_session):
    context = AppContext(models=CONTEXT.models)
    no_hessians = calibrated_session.with_calibration(calibrated_session.calibration)
    with pytest.raises(CalibscopeError, match="tick Sequential"):
        quantize(no_hessians, context=context)
    with pytest.raises(CalibscopeError, match="(?i)sequential is for GPTQ weights only"):
        quantize(no_hessians, preset="W4 g128 RTN", sequential=True, context=context)
    gptqmodel = "W4 g128 GPTQ (gptqmodel)"
    form = QuantizeForm(**dict(zip(SCHEME_WIDGETS, preset_widgets(gptqmodel))), source=HELD, length=64, windows=3,
                        preset=gptqmodel, sequential=True)
    result = run_quantization(form, no_hessians, context, Recorder())
    report = result["session"].quantization
    assert report.meta["gptq"] == "true sequential" and report.meta["run"].sequential
    assert result["status"].startswith("**W4 g128 GPTQ act-order group-aware, true sequential**: perplexity ")
    assert result["runs"].data[0].x[0].replace("<br>", " ") == "#1 W4 g128 GPTQ act-order group-aware, true sequential"
    assert report.layers["output_error"].notna().all() and len(report.layers) == 14
    all_at_once = run_quantization(replace(form, sequential=False), calibrated_session, context,
                                   Recorder())["session"].quantization
    assert all_at_once.meta["gptq"] == "all layers at once" and all_at_once.quantized_perplexity != report.quantized_perplexity


def test_quantize_reports_perplexities_runs_and_sensitivity(calibrated_session):
    context = AppContext(models=CONTEXT.models)  # its own evaluation cache
    result = quantize(calibrated_session, context=context)
    status, table, session = result["status"], result["table"]["value"], result["session"]
    assert status.startswith("**W4 g128 GPTQ**: perplexity ") and "python-docs (held-out 10%)" in status
    assert list(result["summary"].iloc[:, 0])[:4] == ["Scheme", "Float perplexity", "Quantized perplexity", "Gap"]
    assert len(table) == 14 and result["table"]["label"] == "Per layer, largest relative error first"
    ranked = session.quantization.layers.sort_values("output_error", ascending=False)["layer"].tolist()
    assert [short_name(layer) for layer in ranked] == table["name"].tolist() and table["output_error"].iloc[0].endswith("%")
    assert [trace.name for trace in result["depth"].data][:1] == ["weights: relative output error (calibration tokens)"]
    assert result["runs"].data[0].x == ("#1 W4 g128 GPTQ",)
    float_ppl = session.quantization.float_perplexity
    second = quantize(session, preset="W8A8 static (MSE)", sensitivity="thorough", context=context)
    assert second["session"].quantization.float_perplexity == float_ppl  # the same evaluation windows
    assert "perplexity_change" in second["table"]["value"] and second["depth"].data[0].type == "bar"
    none = quantize(session, sensitivity="none", context=context)
    assert none["depth"] is None and "none asked" in none["status"]
    assert none["table"]["label"] == "Per layer, in execution order (no sensitivity measured)"
    assert [r.spec.label() for r in second["session"].quant_runs] == ["W4 g128 GPTQ",
                                                                       "W8 per-channel RTN + A8 static per-tensor mse"]
    again = quantize(second["session"], context=context)
    reused = again["session"].quant_runs[-1]
    assert again["status"].startswith("Reused: ") and reused.layers is session.quantization.layers  # measured once
    assert reused is not session.quantization and reused.meta["run"] == session.quantization.meta["run"]  # its own copy


def test_presets_fill_the_details_and_custom_leaves_them():
    assert preset_widgets("W3 g128 RTN")[:4] == ["rtn", "int", 3, "128"]
    shown = dict(zip(SCHEME_WIDGETS, preset_widgets("NVFP4 W4A4")))
    assert (shown["weight_format"], shown["group"], shown["act_format"]) == ("nvfp4", "16", "nvfp4")
    # what the controls show is the preset: read back as a custom form, it is the same scheme (the peers'
    # GPTQ presets also set damping and a Cholesky policy, which have no control of their own)
    # (nor does AWQ's choice of mappings, which llm-compressor's preset narrows)
    for name in (name for name in PRESETS if not name.startswith("W4 g128 GPTQ (") and not name.endswith("(llm-compressor)")):
        controls = dict(zip(SCHEME_WIDGETS, preset_widgets(name)))
        assert QuantizeForm(**controls, preset=CUSTOM).spec() == PRESETS[name], name
    assert all(set(preset_widgets(name)) for name in PRESETS)
    assert preset_widgets(CUSTOM)[0] == gr.update()


def test_floating_point_schemes_run_from_the_tab_and_a_block_format_names_the_layer_it_cannot_split(calibrated_session):
    static = quantize(calibrated_session, preset="FP8 W8A8 static")
    assert "FP8" in static["status"] and ": perplexity" in static["status"]
    table = static["table"]["value"]
    assert "clip" in table.columns  # the calibrated FP8 input range of each layer
    dynamic = quantize(calibrated_session.with_calibration(calibrated_session.calibration), preset="FP8 W8A8 dynamic")
    assert "dynamic per-token" in dynamic["status"]  # no statistics needed: nothing is calibrated
    with pytest.raises(CalibscopeError, match=r"down_proj has 37 inputs.*nvfp4's blocks of 16"):
        quantize(calibrated_session, preset="NVFP4 W4A4")


def test_smoothquant_runs_from_the_tab_and_shows_how_far_it_moved_each_input(calibrated_session):
    smoothed = quantize(calibrated_session, preset="SmoothQuant + W8A8 static (min/max)")
    assert "SmoothQuant α0.5" in smoothed["status"] and ": perplexity" in smoothed["status"]
    table = smoothed["table"]["value"]
    assert "smoothing_max" in table.columns and (table["smoothing_max"] != "").sum() == 5 * 2  # q, k, v, gate, up per block
    custom = QuantizeForm(**{**dict(zip(SCHEME_WIDGETS, preset_widgets("W8A8 static (min/max)"))), "smoothing": 0.8},
                          preset=CUSTOM)
    assert custom.spec().smoothing == 0.8
    with pytest.raises(CalibscopeError, match="min/max or dynamic"):
        quantize(calibrated_session, preset=CUSTOM, **{**dict(zip(SCHEME_WIDGETS, preset_widgets("W8A8 static (p99.99)"))),
                                                        "smoothing": 0.5})


def test_awq_runs_from_the_tab_on_the_set_itself_and_says_what_its_search_did(calibrated_session):
    no_hessians = calibrated_session.with_calibration(calibrated_session.calibration)  # AWQ needs neither
    result = quantize(no_hessians, preset="W4 g128 AWQ + clip")
    assert result["status"].startswith("**AWQ (clip) + W4 g128 RTN**: perplexity ")
    assert "AWQ searched 6 inputs on the calibration set" in result["status"]  # two norms and up -> down, per block
    table = result["table"]["value"]
    assert {"awq_ratio", "awq_error_identity", "awq_error_best", "output_error_before_awq", "clipped_groups"} <= set(table)
    assert table["output_error"].str.endswith("%").all()  # measured on the set by AWQ's own pass, no Hessians collected
    report = result["session"].quantization
    assert report.meta["calibration_sha256"] == calibrated_session.calibration.manifest.token_sha256
    custom = QuantizeForm(**{**dict(zip(SCHEME_WIDGETS, preset_widgets("W4 g128 RTN"))), "awq": True}, preset=CUSTOM)
    assert custom.spec() == PRESETS["W4 g128 AWQ"]
    asymmetric = QuantizeForm(**{**dict(zip(SCHEME_WIDGETS, preset_widgets("W4 g128 RTN"))), "awq": True, "symmetric": False},
                              preset=CUSTOM)
    assert asymmetric.spec() == PRESETS["W4 g128 AWQ asym (vLLM)"]
    with pytest.raises(CalibscopeError, match="weight-only"):
        quantize(no_hessians, preset=CUSTOM, **{**dict(zip(SCHEME_WIDGETS, preset_widgets("W8A8 static (min/max)"))),
                                                 "awq": True})


def test_a_moe_models_experts_are_quantized_and_the_status_says_how_they_were_calibrated():
    session = build(load(model="tiny-random-qwen3-moe")["session"], nsamples=4, edges="32, 64")["session"]
    session = compute_hessians(HessianForm(batch_size=4), session, CONTEXT, Recorder())["session"]
    result = quantize(session, preset="W4 g128 GPTQ")
    assert "MoE: 8 experts in 2 blocks quantized (routers float)" in result["status"]
    table = result["table"]["value"]
    assert {"expert", "calibration"} <= set(table.columns) and (table["kind"] == "expert").sum() == 16
    policy = next(label for label in EXPERT_POLICIES if "every token" in label)
    every = quantize(session, preset=CUSTOM, **{**dict(zip(SCHEME_WIDGETS, preset_widgets("W4 g128 GPTQ"))), "experts": policy})
    assert "experts on all tokens" in every["status"] and "none needed a fallback" in every["status"]


def test_mixed_precision_runs_from_the_tab_and_shows_its_widths_over_depth(calibrated_session):
    result = quantize(calibrated_session, preset="W4 g128 RTN", mixed=True, budget=6.0, widths=[2, 4, 8])
    report = result["session"].quantization
    assert report.spec.mixed.budget == 6.0 and report.meta["average_bits"] <= 6.0
    assert "mixed W{2,4,8} at 6 bits/weight (output error)" in result["status"]
    heatmap = result["allocation"].data[0]
    assert {value for row in heatmap.z for value in row} <= {2, 4, 8} and "average" in result["allocation"].layout.title.text
    assert ("Stored bits per weight", f"{report.meta['average_bits']:.3f} (scales included)") in report.summary_rows()
    assert quantize(calibrated_session)["allocation"] is None  # one width: no allocation to show
    with pytest.raises(CalibscopeError, match="at least two") as refused:
        quantize(calibrated_session, preset="W4 g128 RTN", mixed=True, widths=[4])
    assert refused.value.field == "budget"


def test_fused_rotations_run_from_the_tab_and_say_what_they_turned(calibrated_session):
    result = quantize(calibrated_session, rotation="none", rotation_fused=list(FUSED))
    rotation = result["session"].quantization.spec.rotation
    assert rotation.residual and rotation.heads and rotation.online() is None
    assert ("Fused rotation: the residual stream (R1, blocks of 32) and each value head (R2, 8 channels) turned and fused "
            "into the weights") in result["status"]
    assert "each input's largest channel over its median one fell" in result["status"]
    assert [trace.name for trace in result["rotation"].data] == ["as loaded input", "turned input"]
    with pytest.raises(CalibscopeError, match="not one of") as refused:
        quantize(calibrated_session, rotation_fused=["R5"])
    assert refused.value.field == "rotation_fused"


def test_a_rotation_runs_from_the_tab_and_shows_each_inputs_ranges_before_and_after(calibrated_session):
    result = quantize(calibrated_session, preset="W4 g128 RTN", act_bits=4, granularity="token", rotation="where it helps",
                      rotation_block="16 (NVFP4's blocks)")
    report = result["session"].quantization
    assert report.spec.rotation.placement.value == "where it helps" and report.spec.rotation.block == 16
    rows = report.layers.dropna(subset=["error_rotated"])
    rotated = rows["rotated"].astype(bool)
    assert set(report.layers["layer"]) - set(rows["layer"]) == {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}
    # 37 wide: no Hadamard matrix; each input rotated only where its layers' summed predicted error falls
    assert rows.loc[rotated, "error_rotated"].sum() <= rows.loc[rotated, "error_unrotated"].sum()
    assert f"Rotation: {int(rotated.sum())} of {len(rows)} layers' inputs rotated" in result["status"]
    figure = result["rotation"]
    assert [short_name(layer) for layer in rows["layer"]][:3] == list(figure.layout.xaxis2.ticktext[:3])
    assert quantize(calibrated_session)["rotation"] is None  # no rotation asked: no view
    with pytest.raises(CalibscopeError, match="block") as refused:
        quantize(calibrated_session, preset="W4 g128 RTN", rotation="every layer", rotation_block="7")
    assert refused.value.field == "rotation_block"
