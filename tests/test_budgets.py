"""Budgets decided before work starts. Memory: one ledger for the process (models, session results,
running passes), passes whose batches would not fit are split (and give the same statistics), a pass
whose one sample does not fit is refused with the numbers. Disk: one quota across visitors, every
failed write leaves nothing, stale staging is swept, a checkpoint's size is estimated from what it
really holds, the GGUF cache never trusts a partial file and never mixes two models."""
from __future__ import annotations

import gc
import os
import time
import zipfile
from pathlib import Path

import pytest
import torch

from engine.atomic import staged_directory
from engine.errors import CalibscopeError, OverBudget
from engine.guard import (
    DiskQuota,
    Guard,
    MemoryBudget,
    Use,
    guarded,
    held_bytes,
    resident_bytes,
    return_freed_memory_promptly,
)
from engine.imatrix.llamacpp import _cached_gguf, complete_gguf, gguf_key
from engine.quant import Quantization, quantize
from engine.runner import PassRequest, plan_for
from engine.sampling import RandomSpec, build
from engine.stats import StatsSpec, collect
from engine.stats.collect import memory_plan, select_layers
from ui.exports import ExportFolder, zipped

MB = 2**20


@pytest.fixture(scope="module")
def calibration(tiny_llama, topical_corpus):
    return build(topical_corpus, tiny_llama.tokenizer, RandomSpec(nsamples=12, length=48, seed=1))


def test_the_ledger_refuses_with_the_numbers_and_releases_what_ends():
    memory = MemoryBudget(total=resident_bytes() + 1000 * MB)  # the app itself: what this process holds now
    with memory.reserve("A pass", 600 * MB):
        with pytest.raises(OverBudget) as refused, memory.reserve("Another pass", 500 * MB):
            pass
        message = str(refused.value)
        assert "Another pass needs about 500 MB" in message and "running work 600 MB" in message
        assert f"memory budget is {memory.total / MB:,.0f} MB" in message
    assert memory.used() == memory.baseline


def test_a_result_is_counted_once_while_any_session_holds_it_and_released_when_none_does():
    memory = MemoryBudget(total=10_000 * MB, baseline=0)

    class Report:
        def __init__(self):
            self.hessians = {"a": torch.zeros(1024, 1024), "b": torch.zeros(512, 512)}

    report = Report()
    memory.hold(report, "Hessians")
    memory.hold(report, "Hessians")  # a second session holding the same report
    assert memory.breakdown()[Use.RESULT] == held_bytes(report) == (1024 * 1024 + 512 * 512) * 4 + len("ab")
    del report
    gc.collect()
    assert memory.used() == 0


def test_a_pass_splits_batches_that_would_not_fit_and_measures_the_same(tiny_llama, calibration):
    spec = StatsSpec(batch_size=12, channel_histograms=False)
    alone = collect(tiny_llama, calibration, spec)
    plan = memory_plan(tiny_llama, calibration, spec)
    held = {item.what: item.megabytes * MB for item in plan.items}
    tight = Guard(memory=MemoryBudget(total=resident_bytes() + 2**34))
    # free: the accumulators and room for the working memory of about two of the twelve samples
    tight.memory.free = lambda: int((held["accumulators, every layer"] + held["one batch's working memory"] / 5) / 0.85)
    with guarded(tight):
        split_plan = memory_plan(tiny_llama, calibration, spec)
        split = collect(tiny_llama, calibration, spec)
    assert "split into" in split_plan.reason and "split into" in split.meta["plan"]["reason"]
    for key in alone.summary["key"]:
        assert torch.allclose(alone.arrays(key)["max"], split.arrays(key)["max"])
        assert torch.allclose(alone.arrays(key)["mean"], split.arrays(key)["mean"], rtol=1e-5, atol=1e-6)


def test_a_guard_caps_the_rows_of_a_batch(tiny_llama, calibration):
    request = PassRequest(select_layers(tiny_llama.model, StatsSpec()), StatsSpec().sides, lambda c, d: None,
                          lambda layer: 0, batch_size=256)
    with guarded(Guard(max_batch_size=4)):
        plan = plan_for(tiny_llama, calibration, request)
    assert "batches of up to 12 samples split into 3 batches of at most 4" in plan.reason


def test_a_pass_whose_one_sample_does_not_fit_is_refused_before_any_forward(tiny_llama, calibration):
    starved = Guard(memory=MemoryBudget(total=1, baseline=0))
    calls = []
    handle = tiny_llama.model.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        with guarded(starved), pytest.raises(OverBudget, match="One sample of .* tokens needs about"):
            collect(tiny_llama, calibration, StatsSpec())
    finally:
        handle.remove()
    assert calls == []


def test_the_disk_quota_counts_every_root_and_what_running_writes_reserved(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "file").write_bytes(b"x" * (2 * MB))
    quota = DiskQuota(total=5 * MB, roots=[tmp_path / "a", tmp_path / "b", tmp_path / "a" / "inner"])
    assert len(quota.roots) == 2 and quota.usage(fresh=True) >= 2 * MB
    with (
        quota.reserve("One visitor's checkpoint", 2 * MB),
        pytest.raises(OverBudget, match="disk quota is 5 MB"),
        quota.reserve("Another visitor's Hessians", 2 * MB),
    ):
        pass
    with quota.reserve("Another visitor's Hessians", 2 * MB):
        pass


def test_downloads_of_every_visitor_share_one_quota_and_a_failed_write_leaves_nothing(tmp_path):
    guard = Guard(disk=DiskQuota(total=int(2.5 * MB), roots=[tmp_path]), work_dir=tmp_path)
    first, second = ExportFolder(), ExportFolder()
    with guarded(guard):
        first.file("statistics", 1, lambda folder: _filled(folder / "s.bin", MB), estimate=MB)
        with pytest.raises(OverBudget, match="disk quota"):
            second.file("hessians", 1, lambda folder: _filled(folder / "h.bin", MB), estimate=MB)  # x2: Gradio's copy

        def interrupted(folder: Path) -> Path:
            _filled(folder / "half.bin", MB // 2)
            raise KeyboardInterrupt  # a cancel, a crash: whatever stops the write

        with pytest.raises(KeyboardInterrupt):
            second.file("report", 1, interrupted, estimate=1)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["s.bin"]


def _filled(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def test_a_zip_that_fails_half_way_leaves_neither_the_archive_nor_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    _filled(folder / "model.safetensors", 1000)

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "write", full_disk)
    with pytest.raises(OSError):
        zipped(folder)
    assert list(tmp_path.iterdir()) == []


def test_stale_staging_is_swept_and_nothing_else(tmp_path):
    keep = _filled(tmp_path / "models" / "gemma" / "model.safetensors", 10)
    stale = [tmp_path / ".gemma.partial-123-abcd", tmp_path / "llama.cpp" / "x-f32.gguf.partial",
             tmp_path / "hub" / "blobs" / "abc.incomplete", tmp_path / ".model.tmp-xyz"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir() if path.name.startswith(".gemma") else _filled(path, 10)
    removed = DiskQuota(total=MB, roots=[tmp_path]).sweep()
    assert sorted(removed) == sorted(stale) and keep.exists() and not any(p.exists() for p in stale)


def test_a_folder_made_while_a_checkpoint_is_written_is_never_replaced(tmp_path):
    target = tmp_path / "w4"
    with pytest.raises(FileExistsError), staged_directory(target) as staging:
        _filled(staging / "model.safetensors", 10)
        target.mkdir()  # someone else's folder appears under the same name meanwhile, still empty
    assert list(target.iterdir()) == []  # rename(2) would have put the checkpoint in its place
    assert [p for p in tmp_path.iterdir() if p.name != "w4"] == []  # the staging folder went too


def test_the_gguf_cache_never_trusts_a_partial_file_and_never_mixes_two_models(tmp_path):
    assert gguf_key("a/b-c", None) != gguf_key("a-b/c", None) and gguf_key("a/b", "main") != gguf_key("a/b", "v2")
    target = tmp_path / "model-f16.gguf"
    target.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 10)  # what a crash left: a header and nothing else
    assert not complete_gguf(target)
    made = []

    def make(partial: Path, scratch: Path) -> None:
        made.append(scratch)
        _write_gguf(partial)

    assert _cached_gguf(target, 0, make) == target and complete_gguf(target) and len(made) == 1
    assert _cached_gguf(target, 0, make) == target and len(made) == 1  # whole now: reused
    assert not made[0].exists() and sorted(os.listdir(tmp_path)) == ["model-f16.gguf"]


def _write_gguf(path: Path) -> None:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_checkpoints_size_is_estimated_from_what_it_holds(dtype, tiny_llama, tmp_path):
    from engine.export import save_quantized
    from engine.export.size import estimated_checkpoint_bytes
    from engine.quant import PRESETS

    spec = PRESETS["W4 g128 RTN"].__class__(PRESETS["W4 g128 RTN"].weights.__class__(group_size=0))
    plan, _ = quantize(tiny_llama, Quantization(spec, sensitivity="none"))
    summary = save_quantized(tiny_llama, plan, spec, tmp_path / "w4", dtype=dtype)
    written = sum(p.stat().st_size for p in (tmp_path / "w4").glob("*.safetensors"))
    assert written >= summary.bytes
    assert 0.9 < estimated_checkpoint_bytes(tiny_llama, spec, dtype) / written < 1.25


def test_an_idle_sessions_results_make_room_for_other_visitors_work_and_say_so():
    from ui.state import IDLE_S, Session

    class Hessians:
        def __init__(self, size):
            self.sums = torch.zeros(size // 4, dtype=torch.float32)

    return_freed_memory_promptly()  # as a shared Space does: freed tensors leave the resident memory at once
    memory = MemoryBudget(total=resident_bytes() + 600 * MB)
    idle, working, recent = Session(), Session(), Session()
    idle.hessians, working.hessians, recent.hessians = Hessians(400 * MB), Hessians(50 * MB), Hessians(50 * MB)
    idle.active_at = working.active_at = time.monotonic() - IDLE_S - 1  # the visitors' last requests, long ago
    working.busy = 1  # a step runs on this one: its results are never taken
    # recent: its visitor asked for something a moment ago (between two steps): never taken either
    for session in (idle, working, recent):
        memory.hold(session.hessians, "Hessians", release=session.releaser(session.hessians))
    with memory.reserve("Another visitor's pass", 200 * MB):
        assert idle.hessians is None and working.hessians is not None and recent.hessians is not None
    with pytest.raises(CalibscopeError, match="were freed while this session was idle"):
        idle.require("hessians")
    # nothing idle left to give back: refused with the numbers
    with pytest.raises(OverBudget), memory.reserve("A pass too large", 600 * MB):
        pass
    assert working.hessians is not None and recent.hessians is not None
