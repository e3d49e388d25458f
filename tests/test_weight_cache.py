"""The weight cache: entries appear whole or not at all, and only complete ones are trusted."""
import pytest

from engine.models import builtin, weight_cache
from engine.models.builtin import GgufSource, cached_checkpoint


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBSCOPE_CACHE", str(tmp_path))
    return tmp_path


def test_cache_root_follows_the_environment(cache_dir):
    assert weight_cache.cache_root() == cache_dir


def test_complete_entry_is_published_with_its_marker(cache_dir):
    with weight_cache.building_entry("k1", {"model": "m"}) as staging:
        (staging / "weights.bin").write_bytes(b"123")
    entry = weight_cache.complete_entry("k1")
    assert entry == cache_dir / "models" / "k1"
    assert (entry / "weights.bin").read_bytes() == b"123" and (entry / weight_cache.MARKER).is_file()


def test_a_failed_build_leaves_nothing_behind(cache_dir):
    with pytest.raises(KeyboardInterrupt), weight_cache.building_entry("k2", {}) as staging:
        (staging / "half-written.safetensors").write_bytes(b"xx")
        raise KeyboardInterrupt  # e.g. the user killed the first load
    assert weight_cache.complete_entry("k2") is None
    assert list((cache_dir / "models").iterdir()) == []


def test_an_unmarked_directory_is_never_trusted_and_gets_replaced(cache_dir):
    leftover = cache_dir / "models" / "k3"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"truncated")
    assert weight_cache.complete_entry("k3") is None
    with weight_cache.building_entry("k3", {}) as staging:
        (staging / "model.safetensors").write_bytes(b"whole")
    assert (weight_cache.complete_entry("k3") / "model.safetensors").read_bytes() == b"whole"


def _fake_source():
    return GgufSource(
        name="fake", package="engine", install_hint="-", description="fake model",
        sha256=lambda: "ab" * 32, materialize=lambda scratch: scratch,
    )


def test_builtin_conversion_runs_once_then_comes_from_the_cache(cache_dir, monkeypatch, tiny_llama):
    calls = []

    def convert(source, target, progress):
        calls.append(target)
        tiny_llama.model.save_pretrained(target)
        tiny_llama.tokenizer.save_pretrained(target)

    monkeypatch.setitem(builtin.BUILTIN_MODELS, "builtin:fake", _fake_source())
    monkeypatch.setattr(builtin, "_convert_into", convert)
    first, first_cached, _ = cached_checkpoint("builtin:fake", lambda f, m: None)
    second, second_cached, _ = cached_checkpoint("builtin:fake", lambda f, m: None)
    assert (first_cached, second_cached) == (False, True) and first == second and len(calls) == 1
    assert "abababababababab" in first.name and "transformers-" in first.name


def test_a_conversion_killed_half_way_is_redone(cache_dir, monkeypatch, tiny_llama):
    def dies(source, target, progress):
        (target / "model.safetensors").write_bytes(b"partial")
        raise MemoryError("killed")

    monkeypatch.setitem(builtin.BUILTIN_MODELS, "builtin:fake", _fake_source())
    monkeypatch.setattr(builtin, "_convert_into", dies)
    with pytest.raises(MemoryError):
        cached_checkpoint("builtin:fake", lambda f, m: None)
    assert weight_cache.complete_entry(_fake_source().cache_key()) is None
