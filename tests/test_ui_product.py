"""Product behaviour across tabs: reuse of finished runs, cancellation, shared-Space caps, and what a
new model or set invalidates."""

import pytest
from transformers import LlamaConfig

from engine import ModelSpec
from engine.errors import CalibscopeError
from engine.guard import guarded
from engine.models.admission import admit
from engine.models.size import estimate_parameters
from tests.fake_hub import FakeHub
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.context import AppContext
from ui.limits import Limits
from ui.tabs.activations import StatsForm, collect_statistics
from ui.tabs.hessians import HessianForm, compute_hessians


@pytest.fixture(scope="module")
def built_session():
    return build(load(builtin_name="python-docs")["session"], nsamples=6, edges="64, 128")["session"]


def _stats(session, percentiles="99.9"):
    form = StatsForm(layer_types=["Linear"], percentiles=percentiles, batch_size=4)
    return collect_statistics(form, session, CONTEXT, Recorder())


def _hessians(session, context=CONTEXT):
    return compute_hessians(HessianForm(batch_size=4), session, context, Recorder())


def test_a_second_run_with_the_same_set_and_settings_is_reused(built_session):
    first = _stats(built_session)
    again = _stats(first["session"])
    assert first["status"].startswith("**Collected**") and again["status"].startswith("**Reused**")
    assert again["session"].stats is first["session"].stats
    assert _stats(first["session"], percentiles="99.99")["status"].startswith("**Collected**")
    hessians = _hessians(built_session)
    assert _hessians(hessians["session"])["status"].startswith("**Reused**")


def test_a_new_set_or_model_drops_what_was_built_from_the_old_one(built_session):
    with_stats = _stats(built_session)["session"]
    rebuilt = with_stats.with_calibration(with_stats.calibration)
    assert rebuilt.stats is None and rebuilt.hessians is None and rebuilt.calibration is with_stats.calibration
    reloaded = load(builtin_name="python-code", session=with_stats)["session"]
    assert reloaded.calibration is None and reloaded.stats is None


def test_shared_space_caps_hessian_memory_per_session(built_session):
    tiny_cap = AppContext(limits=Limits(shared=True, max_hessian_mb=0.001), models=CONTEXT.models)
    with pytest.raises(CalibscopeError, match="more than the 0 MB a session may hold"):
        _hessians(built_session, tiny_cap)


def test_shared_space_refuses_large_models_before_loading(tmp_path, monkeypatch):
    shared = Limits.shared_space().guard()
    hub = FakeHub().install(monkeypatch)
    hub.add("org/huge", 7_000_000_000)
    hub.add("org/small", 100_000_000)
    with guarded(shared):
        assert admit(ModelSpec("tiny-random-llama")).files == ()  # packaged: never asked of the hub
        with pytest.raises(CalibscopeError, match="7.00 B parameters"):
            admit(ModelSpec("org/huge"))
        assert admit(ModelSpec("org/small")).parameters == 100_000_000
    LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2).save_pretrained(tmp_path)
    expected = 100 * 16 * 2 + 2 * (4 * 16 * 16 + 3 * 16 * 32 + 2 * 16) + 16  # embed + head, blocks, final norm
    assert estimate_parameters(str(tmp_path)) == expected
