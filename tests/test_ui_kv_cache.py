"""The KV cache in the dashboard: the Activation ranges tab's KV section (its figure's content, its
summary) and the Quantize tab's KV cache option, which reuses what the section collected."""
import numpy as np
import pytest

from engine.errors import CalibscopeError
from engine.figures import position_share
from engine.quant import kv_method_ranges
from tests.ui_helpers import CONTEXT, Recorder, build, handled, load
from ui.sections.kv_cache import KVForm, collect_kv_cache
from ui.sections.quantized_model import CheckpointForm, write_checkpoint
from ui.state import Session
from ui.tabs.quantize import QuantizeForm, run_quantization


@pytest.fixture(scope="module")
def session():
    return build(load(builtin_name="python-docs")["session"], nsamples=6, edges="64, 128")["session"]


def test_the_kv_section_shows_each_layers_cached_ranges_methods_and_positions(session):
    with pytest.raises(CalibscopeError, match="Dataset"):
        collect_kv_cache(KVForm(), Session(), CONTEXT, Recorder())
    result = handled(collect_kv_cache, KVForm(), session)
    report = result["session"].kv_cache
    assert report is not None and report.meta["calibration_sha256"] == session.calibration.manifest.token_sha256
    figure = result["figure"]
    layers = len(report.layers)
    heads = report.meta["kv_heads"]
    per_head = [trace for trace in figure.data if (trace.name or "").startswith(("keys, head", "values, head"))]
    assert len(per_head) == 2 * heads
    keys0 = next(trace for trace in per_head if trace.name == "keys, head 0")
    assert np.allclose(keys0.y, [float(stats["key"].absmax[0]) for stats in report.layers.values()])
    methods = kv_method_ranges(report)
    mse = next(trace for trace in figure.data if trace.name == "keys, MSE")
    assert np.allclose(mse.y, methods[methods["tensor"] == "key"]["MSE"])
    assert all(0 < value <= 1 + 1e-6 for value in mse.y)  # a clip, never beyond the |max|
    heatmap = next(trace for trace in figure.data if trace.type == "heatmap")
    share, labels = position_share(report)
    assert list(heatmap.y) == labels and labels[0] == "position 0" and np.asarray(heatmap.z).shape == (len(labels), layers)
    assert np.allclose(np.asarray(heatmap.z), share)
    assert np.allclose(share.max(0), 1.0)  # each layer's |max| sits in some span of positions
    assert "attention layers" in result["status"] and len(result["table"]) == 2 * layers * heads


def test_the_quantize_tab_quantizes_the_kv_cache_on_the_sections_statistics(session):
    collected = handled(collect_kv_cache, KVForm(), session)["session"]
    form = QuantizeForm(method="rtn", bits=8, group="per channel", preset="Custom", kv_cache="FP8, a scale per KV head",
                        kv_range="mse", length=64, windows=2, sensitivity="none")
    result = handled(run_quantization, form, collected)
    report = result["session"].quantization
    assert report.spec.kv_cache is not None and report.spec.kv_cache.strategy.value == "attn_head"
    rows = report.layers[report.layers["kind"] == "kv cache"]
    assert len(rows) == 2 * len(collected.kv_cache.layers) and rows["clip"].gt(0).all()
    assert "KV cache: FP8 in" in result["status"]
    constant = handled(run_quantization, QuantizeForm(**{**form.__dict__, "kv_cache": "FP8, constant scale"}), collected)
    assert "nothing calibrated" in constant["status"]
    kv_only = QuantizeForm(**{**form.__dict__, "method": "none"})
    report = handled(run_quantization, kv_only, collected)["session"].quantization
    assert set(report.layers["kind"]) == {"kv cache"} and report.meta["layers"] == 0
    # the Export tab writes the weights and the cache's scales, and the reload rounds the cache as simulated
    written = constant["session"]
    result = handled(write_checkpoint, CheckpointForm(run=1, dtype="model"), written)  # W8 RTN, nothing collected
    assert "equal within 0.1%" in result["status"] and "--kv-cache-dtype fp8" in result["status"]


def test_the_sensitivity_figure_draws_the_kv_caches_error_beside_the_layers(session):
    from engine.figures import sensitivity_depth

    form = QuantizeForm(method="rtn", bits=8, group="per channel", preset="Custom", kv_cache="FP8, a scale per tensor",
                        length=64, windows=2, sensitivity="cheap")
    collected = handled(collect_kv_cache, KVForm(), session)["session"]
    report = handled(run_quantization, form, collected)["session"].quantization
    figure = sensitivity_depth(report)
    [trace] = [trace for trace in figure.data if (trace.name or "").startswith("KV cache")]
    kv = report.layers["kind"] == "kv cache"
    assert np.allclose(np.array(trace.y, dtype=float)[kv.to_numpy()], report.layers.loc[kv, "kv_error"])
    assert np.isnan(np.array(trace.y, dtype=float)[~kv.to_numpy()]).all()
