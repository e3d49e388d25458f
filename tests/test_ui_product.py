"""Product behaviour across tabs: reuse of finished runs, cancellation, shared-Space caps, and what a
new model or set invalidates."""
import threading
from types import SimpleNamespace

import pytest
from transformers import LlamaConfig

from engine.errors import CalibscopeError
from engine.models.size import estimate_parameters
from engine.stats.hessian_report import collect_hessians
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.cancel import Cancelled, cancellable, request_cancel
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


def test_shared_space_refuses_large_models_before_loading(tmp_path):
    shared = Limits.shared_space()
    shared.check_model_size("tiny-random-llama")  # packaged: never estimated
    with pytest.raises(CalibscopeError, match="7.00 B parameters"):
        shared.check_model_size("org/huge", estimate=lambda name: 7_000_000_000)
    shared.check_model_size("org/small", estimate=lambda name: 100_000_000)
    LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2).save_pretrained(tmp_path)
    expected = 100 * 16 * 2 + 2 * (4 * 16 * 16 + 3 * 16 * 32 + 2 * 16) + 16  # embed + head, blocks, final norm
    assert estimate_parameters(str(tmp_path)) == expected


def test_cancel_stops_a_pass_at_its_next_report_and_leaves_the_model_usable(built_session):
    request = SimpleNamespace(session_hash="visitor-1")
    progress = cancellable(lambda fraction, desc=None: None, request)
    progress(0.1, "first batch")
    request_cancel(request)
    loaded = CONTEXT.models.get(built_session.model_spec)
    with pytest.raises(Cancelled):
        collect_hessians(loaded, built_session.calibration, progress=progress)
    assert not any(module._forward_pre_hooks for module in loaded.model.modules())
    acquired = []
    thread = threading.Thread(target=lambda: acquired.append(loaded.lock.acquire(timeout=5) and loaded.lock.release() is None))
    thread.start()
    thread.join()
    assert acquired == [True]  # the lock was released on the way out
    cancellable(lambda fraction, desc=None: None, request)(0.5, "a new run starts uncancelled")


def test_a_long_step_says_how_long_before_it_starts_and_learns_from_what_it_took(built_session):
    context = AppContext(models=CONTEXT.models)
    loaded = context.models.get(built_session.model_spec)
    prior = context.times.estimate(loaded, "hessians", 1000)
    reports = []
    compute_hessians(HessianForm(batch_size=4), built_session, context, lambda f, m: reports.append(m))
    assert reports[0].startswith("Starting: about ") and reports[0].endswith("on this machine")
    tokens = int(built_session.calibration.lengths.sum())
    measured = context.times.rates[(loaded.info.name, "hessians")] * tokens
    assert context.times.estimate(loaded, "hessians", tokens) == pytest.approx(measured) and prior > 0
