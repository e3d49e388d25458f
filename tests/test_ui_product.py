"""Product behaviour across tabs: reuse of finished runs, cancellation, shared-Space caps, and what a
new model or set invalidates."""
import threading
from types import SimpleNamespace

import pytest
from transformers import LlamaConfig

from engine import ModelSpec
from engine.errors import CalibscopeError
from engine.guard import guarded
from engine.models import admission
from engine.models.admission import admit
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


def test_shared_space_refuses_large_models_before_loading(tmp_path, monkeypatch):
    shared = Limits.shared_space().guard()
    with guarded(shared):
        assert admit(ModelSpec("tiny-random-llama")).files == ()  # packaged: never asked of the hub
        monkeypatch.setattr(admission, "_hub_info", lambda name, revision: fake_hub_info(7_000_000_000))
        with pytest.raises(CalibscopeError, match="7.00 B parameters"):
            admit(ModelSpec("org/huge"))
        monkeypatch.setattr(admission, "_hub_info", lambda name, revision: fake_hub_info(100_000_000))
        assert admit(ModelSpec("org/small")).parameters == 100_000_000
    LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2).save_pretrained(tmp_path)
    expected = 100 * 16 * 2 + 2 * (4 * 16 * 16 + 3 * 16 * 32 + 2 * 16) + 16  # embed + head, blocks, final norm
    assert estimate_parameters(str(tmp_path)) == expected


def fake_hub_info(parameters: int, files: dict[str, int] | None = None, sha: str = "0" * 40):
    """What the hub's model_info answers: the commit, the files with their sizes, the safetensors count."""
    files = files or {"config.json": 700, "model.safetensors": parameters * 2, "tokenizer.json": 9_000_000}
    return SimpleNamespace(sha=sha, safetensors=SimpleNamespace(total=parameters),
                           siblings=[SimpleNamespace(rfilename=name, size=size) for name, size in files.items()])


def test_cancel_stops_a_pass_at_its_next_report_and_leaves_the_model_usable(built_session):
    request = SimpleNamespace(session_hash="visitor-1")
    with cancellable(lambda fraction, desc=None: None, request, "hessians") as progress:
        progress(0.1, "first batch")
        request_cancel(request, "hessians")
        loaded = CONTEXT.models.get(built_session.model_spec)
        with pytest.raises(Cancelled):
            collect_hessians(loaded, built_session.calibration, progress=progress)
    assert not any(module._forward_pre_hooks for module in loaded.model.modules())
    acquired = []
    thread = threading.Thread(target=lambda: acquired.append(loaded.lock.acquire(timeout=5) and loaded.lock.release() is None))
    thread.start()
    thread.join()
    assert acquired == [True]  # the lock was released on the way out
    with cancellable(lambda fraction, desc=None: None, request, "hessians") as progress:
        progress(0.5, "a new run starts uncancelled")


def test_a_cancel_stops_its_own_run_only():
    """Two runs of one visitor at once: cancelling one step leaves the other running, and starting a
    run never clears the mark another run is waiting to see."""
    request = SimpleNamespace(session_hash="visitor-2")
    quiet = lambda fraction, desc=None: None  # noqa: E731
    with cancellable(quiet, request, "collect_statistics") as statistics, cancellable(quiet, request, "hessians") as hessians:
        request_cancel(request, "hessians")
        with cancellable(quiet, request, "sweep") as sweep:  # a run started after the mark
            sweep(0.1, "runs on")
        statistics(0.5, "runs on")
        with pytest.raises(Cancelled):
            hessians(0.5, "stops")
    with cancellable(quiet, request, "hessians") as again:
        again(0.1, "the next run of the step is not cancelled")


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
