"""The model cache admits under one lock: concurrent loads never hold more models than its capacity,
a request refused at admission (unknown id, too large, too many files, an architecture transformers
cannot load) evicts nothing, a reload check counts as a model, and the per-model locks are pruned.
Admission reads the hub's metadata and the config's numbers only, and pins the revision it checked."""
from __future__ import annotations

import threading
import time

import pytest

from engine import ModelSpec
from engine.errors import CalibscopeError, ModelLoadError, OverBudget
from engine.guard import Guard, MemoryBudget, ModelLimits, Policy, guarded, resident_bytes
from engine.models import ModelCache
from engine.models.admission import admit
from engine.models.size import parameters_from_config
from tests.fake_hub import LLAMA_CONFIG, FakeHub

GB = 10**9


class Loaded:
    """What a loader returns in these tests: a model with its lock."""

    def __init__(self, spec):
        self.spec, self.lock = spec, threading.RLock()


def watched_cache(capacity: int, seconds: float = 0.3):
    """A cache whose loader records how many models were held (cached or loading) while it ran."""
    seen, loading, lock = [], [0], threading.Lock()

    def load(spec, progress):
        with lock:
            loading[0] += 1
        seen.append(len(cache) + loading[0])
        time.sleep(seconds)
        seen.append(len(cache) + loading[0])
        with lock:
            loading[0] -= 1
        return Loaded(spec)

    cache = ModelCache(capacity=capacity, loader=load)
    return cache, seen


def test_two_loads_at_once_never_hold_more_models_than_the_capacity():
    cache, seen = watched_cache(capacity=2)
    cache.get(ModelSpec("org/a"))
    threads = [threading.Thread(target=cache.get, args=(ModelSpec(name),)) for name in ("org/b", "org/c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(seen) <= 2, seen
    assert len(cache) == 2 and cache.held() == 2 and ModelSpec("org/c") in cache


def test_a_request_refused_at_admission_evicts_nothing():
    def refuse(spec):
        raise ModelLoadError(f"{spec.name} is too large")

    cache = ModelCache(capacity=1, loader=lambda spec, progress: Loaded(spec))
    cache.get(ModelSpec("org/a"))
    refusing = ModelCache(capacity=1, loader=lambda spec, progress: Loaded(spec), admitter=refuse)
    refusing._models = cache._models  # the same cached models, a refusing admission
    with pytest.raises(ModelLoadError, match="too large"):
        refusing.get(ModelSpec("org/huge"))
    assert ModelSpec("org/a") in cache and len(cache) == 1 and cache.held() == 1


def test_a_load_that_fails_gives_its_slot_back_and_leaves_no_lock_behind():
    def fail(spec, progress):
        raise RuntimeError("corrupt weights")

    cache = ModelCache(capacity=1, loader=fail)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            cache.get(ModelSpec("org/broken"))
    assert cache.held() == 0 and cache._loading == {}
    cache._loader = lambda spec, progress: Loaded(spec)
    assert cache.get(ModelSpec("org/fine")).spec == ModelSpec("org/fine") and cache._loading == {}


def test_a_reload_check_counts_as_a_model_and_gives_its_slot_back():
    cache, seen = watched_cache(capacity=1, seconds=0)
    cache.get(ModelSpec("org/a"))
    with cache.borrow("Reloading the checkpoint", 0):
        assert cache.held() == 1 and ModelSpec("org/a") not in cache  # the cached model made room
        waiting = threading.Thread(target=cache.get, args=(ModelSpec("org/b"),))
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive() and len(cache) == 0  # no second model while the slot is borrowed
    waiting.join(5)
    assert ModelSpec("org/b") in cache and max(seen) <= 1


def test_under_a_memory_budget_models_are_evicted_for_memory_or_refused_with_nothing_evicted(monkeypatch):
    hub = FakeHub().install(monkeypatch)
    for name, parameters in (("org/a", 1 * GB), ("org/b", 1 * GB), ("org/huge", 5 * GB)):
        hub.add(name, parameters)
    memory = MemoryBudget(total=resident_bytes() + 5 * GB)  # float32: 4 GB a billion parameters
    guard = Guard(policy=Policy(local_paths=False), memory=memory, models=ModelLimits(parameters=10 * GB))
    cache = ModelCache(capacity=2, loader=lambda spec, progress: Loaded(spec))
    with guarded(guard):
        cache.get(ModelSpec("org/a", dtype="float32"))
        assert memory.used() == memory.baseline + 4 * GB
        cache.get(ModelSpec("org/b", dtype="float32"))  # 8 GB would not fit: a is evicted for memory, not for slots
        assert len(cache) == 1 and memory.used() == memory.baseline + 4 * GB
        with pytest.raises(OverBudget, match="cannot hold it even with every other model unloaded"):
            cache.get(ModelSpec("org/huge", dtype="float32"))
        assert ModelSpec("org/b", dtype="float32") in cache and memory.used() == memory.baseline + 4 * GB


def test_admission_pins_the_revision_checked_and_counts_only_the_files_a_load_reads(monkeypatch):
    hub = FakeHub().install(monkeypatch)
    hub.add("org/model", 500_000_000, sha="a" * 40)
    guard = Guard(policy=Policy(local_paths=False), models=ModelLimits(parameters=GB, download_bytes=2 * GB))
    cache = ModelCache(capacity=1, loader=lambda spec, progress: Loaded(spec))
    with guarded(guard):
        admitted = admit(ModelSpec("org/model", revision="main"))
        loaded = cache.get(ModelSpec("org/model"))
    assert admitted.spec.revision == "a" * 40 and loaded.spec.revision == "a" * 40
    assert {name for name, _ in admitted.files} == {"config.json", "model.safetensors", "tokenizer.json"}
    assert hub.downloads == [("org/model", "a" * 40, ("config.json", "model.safetensors", "tokenizer.json"))]


def test_admission_refuses_downloads_over_the_limit_and_architectures_transformers_cannot_load(monkeypatch):
    hub = FakeHub().install(monkeypatch)
    hub.add("org/heavy", 100_000_000, files={"config.json": 1, "model.safetensors": 3 * GB})
    hub.add("org/custom", 100_000_000, config={**LLAMA_CONFIG, "model_type": "my_own", "auto_map": {}})
    guard = Guard(policy=Policy(local_paths=False), models=ModelLimits(parameters=GB, download_bytes=2 * GB))
    with guarded(guard):
        with pytest.raises(OverBudget, match="would download 3.00 GB of files"):
            admit(ModelSpec("org/heavy"))
        with pytest.raises(ModelLoadError, match="needs to run its own code"):
            admit(ModelSpec("org/custom"))
        with pytest.raises(CalibscopeError, match="org/unknown"):
            admit(ModelSpec("org/unknown"))


@pytest.mark.parametrize("field, value", [("num_hidden_layers", 10**9), ("hidden_size", -1), ("vocab_size", "many"),
                                          ("num_attention_heads", 1.5), ("hidden_size", True)])
def test_a_config_with_impossible_numbers_is_refused_without_building_anything(field, value):
    started = time.perf_counter()
    with pytest.raises(ModelLoadError, match=f"gives {field}"):
        parameters_from_config({**LLAMA_CONFIG, field: value})
    assert time.perf_counter() - started < 0.1


def test_a_config_of_ten_thousand_layers_is_counted_by_arithmetic_not_by_building_it():
    started = time.perf_counter()
    assert parameters_from_config({**LLAMA_CONFIG, "num_hidden_layers": 10_000}) > 6 * 10**11
    assert time.perf_counter() - started < 0.1


def test_the_hub_cache_is_trimmed_least_recently_used_first_and_never_a_kept_model(monkeypatch):
    from types import SimpleNamespace

    import huggingface_hub

    from engine.models.admission import trim_hub_cache

    def repo(name, accessed, *revisions):
        return SimpleNamespace(repo_id=name, last_accessed=accessed,
                               revisions=[SimpleNamespace(commit_hash=sha, size_on_disk=size) for sha, size in revisions])

    deleted = []
    repos = [repo("org/old", 1, ("o1", 3 * GB)), repo("org/kept", 2, ("k1", 3 * GB)), repo("org/mid", 3, ("m1", 2 * GB)),
             repo("org/new", 4, ("n1", 1 * GB))]
    cache = SimpleNamespace(repos=repos, size_on_disk=9 * GB,
                            delete_revisions=lambda *shas: deleted.extend(shas) or SimpleNamespace(
                                expected_freed_size=0, execute=lambda: None))
    monkeypatch.setattr(huggingface_hub, "scan_cache_dir", lambda: cache)
    trim_hub_cache(4 * GB, keep=[ModelSpec("org/kept", revision="k1")])
    assert deleted == ["o1", "m1"]  # oldest first, the kept model skipped, and no more than needed
