"""The dashboard without a browser: handlers called as functions, the app built, the CLI parsed."""
import threading
import time

import gradio as gr
import pytest

from engine import ModelSpec
from ui import state
from ui.app import build_app
from ui.cli import main as cli_main
from ui.limits import Limits
from ui.state import ModelCache, Session
from ui.tabs.model_data import load_model_and_corpus


class FakeProgress:
    def __init__(self):
        self.calls = []

    def __call__(self, fraction, desc=None, **kwargs):
        self.calls.append((fraction, desc))


def _load(model="tiny-random-llama", kind="builtin", builtin="python-docs", upload=None, column="", limits=Limits(), session=None):
    progress = FakeProgress()
    result = load_model_and_corpus(model, "auto", "auto", kind, builtin, "train", "wikitext2", "", "train", column, upload,
                                   session, limits=limits, progress=progress)
    return result, progress


def test_load_handler_fills_tables_and_session():
    (status, model_table, corpus_table, preview, session), progress = _load()
    assert "Loaded" in status and "tiny-random-llama" in status and "builtin:python-docs[train]" in status
    assert dict(model_table.values.tolist())["Architecture"] == "LlamaForCausalLM"
    assert dict(corpus_table.values.tolist())["Documents"] == f"{len(session.corpus):,}"
    assert list(preview.columns) == ["row", "source", "characters", "text"] and len(preview) == 50
    assert session.model_spec == ModelSpec("tiny-random-llama") and session.corpus_spec.name == "python-docs"
    fractions = [f for f, _ in progress.calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_load_handler_reads_an_uploaded_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"text": "My own calibration text, first record."}\n{"text": "Second record of text."}\n')
    (status, _, corpus_table, _, session), _ = _load(kind="file", upload=str(path))
    assert "file:mine.jsonl" in status and len(session.corpus) == 2


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"model": "builtin:nothing"}, "Unknown builtin model"),
        ({"model": ""}, "model name is empty"),
        ({"kind": "file", "upload": None}, "Choose a file"),
        ({"kind": "hub"}, "python-docs"),
    ],
)
def test_bad_input_becomes_a_readable_error(kwargs, words):
    with pytest.raises(gr.Error) as raised:
        _load(**kwargs)
    assert words in raised.value.message and "Traceback" not in raised.value.message


def test_bad_upload_becomes_a_readable_error(tmp_path):
    path = tmp_path / "binary.txt"
    path.write_bytes(b"\x00\x01" * 100)
    with pytest.raises(gr.Error, match="binary"):
        _load(kind="file", upload=str(path))


def test_unexpected_errors_are_summarized_not_dumped(monkeypatch):
    monkeypatch.setattr(state.MODELS, "get", lambda spec, progress: (_ for _ in ()).throw(RuntimeError("boom\nframe 1\nframe 2")))
    with pytest.raises(gr.Error) as raised:
        _load()
    assert "RuntimeError: boom" in raised.value.message and "frame 1" not in raised.value.message


def test_shared_space_refuses_local_paths_and_caps_uploads(tmp_path):
    shared = Limits.shared_space()
    with pytest.raises(gr.Error, match="disabled on this shared Space"):
        _load(model=str(tmp_path), limits=shared)
    big = tmp_path / "big.txt"
    big.write_text("calibration text " * 2_000_000)
    with pytest.raises(gr.Error, match="the limit is 20.0 MiB"):
        _load(kind="file", upload=str(big), limits=shared)


def test_build_app_constructs_without_work_and_preselects():
    models_before = len(state.MODELS)
    app = build_app(Limits(), default_model="tiny-random-gpt2")
    assert isinstance(app, gr.Blocks)
    dropdown_values = [block.value for block in app.blocks.values() if isinstance(block, gr.Dropdown)]
    assert "tiny-random-gpt2" in dropdown_values and "mixed" in dropdown_values
    labels = [block.label for block in app.blocks.values() if isinstance(block, gr.Tab)]
    assert labels == ["Model & Data", "Dataset", "Activation ranges", "Hessians", "Sensitivity", "Quantize", "Compare",
                      "Export"]
    assert len(state.MODELS) == models_before  # building the page loads no model


def test_model_cache_loads_once_under_concurrency_and_evicts(monkeypatch):
    calls = []

    def slow_load(spec, progress):
        calls.append(spec)
        time.sleep(0.2)
        return object()

    monkeypatch.setattr(state, "load_model", slow_load)
    cache = ModelCache(capacity=2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(ModelSpec("a/b")))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1
    cache.get(ModelSpec("c/d"))
    cache.get(ModelSpec("e/f"))
    assert ModelSpec("a/b") not in cache and ModelSpec("e/f") in cache


def test_sessions_do_not_share_state():
    (_, _, _, _, first), _ = _load(builtin="python-docs")
    (_, _, _, _, second), _ = _load(builtin="python-code", session=Session())
    assert first.corpus_spec.name == "python-docs" and second.corpus_spec.name == "python-code"


def test_cli_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exited:
        cli_main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--share", "--shared-space"):
        assert option in text
