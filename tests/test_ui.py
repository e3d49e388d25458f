"""The dashboard without a browser: handlers called as functions, the wiring, the app built, the CLI parsed."""
import inspect
import shutil
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
import pytest

from engine import ModelSpec
from engine.errors import CalibscopeError, HubUnavailable
from engine.models import ModelCache
from tests.ui_helpers import CONTEXT, Recorder, load
from ui.app import build_app
from ui.cli import main as cli_main
from ui.context import AppContext
from ui.limits import Limits, upload_folder
from ui.state import Session
from ui.tabs.model_data import ModelDataForm, load_model_and_corpus
from ui.wiring import gradio_function


def test_load_handler_fills_tables_and_session():
    progress = Recorder()
    result = load_model_and_corpus(ModelDataForm(model="tiny-random-llama", builtin_name="python-docs"), Session(),
                                   CONTEXT, progress)
    status, session = result["status"], result["session"]
    assert "Loaded" in status and "tiny-random-llama" in status and "builtin:python-docs[train]" in status
    assert dict(result["model_table"].values.tolist())["Architecture"] == "LlamaForCausalLM"
    assert dict(result["corpus_table"].values.tolist())["Documents"] == f"{len(session.corpus):,}"
    assert list(result["preview"].columns) == ["row", "source", "characters", "text"] and len(result["preview"]) == 50
    assert session.model_spec == ModelSpec("tiny-random-llama") and session.corpus_spec.name == "python-docs"
    fractions = [f for f, _ in progress.calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_load_handler_reads_an_uploaded_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"text": "My own calibration text, first record."}\n{"text": "Second record of text."}\n')
    result = load(kind="file", upload=str(path))
    assert "file:mine.jsonl" in result["status"] and len(result["session"].corpus) == 2


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"model": "builtin:nothing"}, "Unknown builtin model"),
        ({"model": ""}, "model name is empty"),
        ({"kind": "file", "upload": None}, "Choose a file"),
        ({"kind": "hub"}, "python-docs"),
    ],
)
def test_bad_input_is_a_message(fields, words):
    with pytest.raises(CalibscopeError, match=words):
        load(**fields)


STATUS = gr.Markdown()


def _wired(context=CONTEXT):
    """The Model & Data handler as Gradio calls it: widget values, session, gr.Progress and gr.Request."""
    names = [f for f in ModelDataForm.__dataclass_fields__]
    outputs = {"status": STATUS, "model_table": gr.Dataframe(visible=False), "corpus_table": gr.Dataframe(),
               "preview": gr.Dataframe(), "session": gr.State()}
    return gradio_function(load_model_and_corpus, ModelDataForm, names, outputs, context), names, outputs


def test_wired_handlers_show_failures_in_the_status_line_and_name_their_parameters():
    run, names, outputs = _wired()
    values = {**ModelDataForm().__dict__, "model": "builtin:nothing"}
    answer = run(*[values[n] for n in names], Session(), lambda *a, **k: None, None)
    assert list(answer) == [STATUS]  # nothing else changes: not the tables, not the session
    assert answer[STATUS].startswith("**Not done:** Unknown builtin model") and "Traceback" not in answer[STATUS]
    parameters = list(inspect.signature(run).parameters)
    assert parameters == [*names, "session", "progress", "request"] and run.__name__ == "load_model_and_corpus"
    values = {**ModelDataForm().__dict__, "model": "tiny-random-llama", "builtin_name": "python-docs"}
    answer = run(*[values[n] for n in names], Session(), lambda *a, **k: None, None)
    assert answer[outputs["model_table"]]["visible"] is True  # results appear with their first value


def test_bad_upload_is_a_readable_error(tmp_path):
    path = tmp_path / "binary.txt"
    path.write_bytes(b"\x00\x01" * 100)
    with pytest.raises(CalibscopeError, match="binary"):
        load(kind="file", upload=str(path))


def test_unexpected_errors_are_summarized_not_dumped():
    def boom(spec, progress):
        raise RuntimeError("boom\nframe 1\nframe 2")

    run, names, _ = _wired(AppContext(models=ModelCache(loader=boom)))
    values = {**ModelDataForm().__dict__, "model": "tiny-random-llama"}
    status = run(*[values[n] for n in names], Session(), lambda *a, **k: None, None)[STATUS]
    assert "RuntimeError: boom" in status and "frame 1" not in status and "still running" in status


def test_shared_space_refuses_local_paths_and_caps_uploads(tmp_path):
    shared = AppContext(limits=Limits.shared_space(), models=CONTEXT.models)
    with pytest.raises(CalibscopeError, match="is not a Hugging Face id: this shared Space reads nothing of its own disk"):
        load(model=str(tmp_path), context=shared)
    big = tmp_path / "big.txt"
    big.write_text("calibration text " * 2_000_000)
    with pytest.raises(CalibscopeError, match="must be a file you uploaded here"):
        load(kind="file", upload=str(big), context=shared)
    uploaded = Path(tempfile.mkdtemp(dir=upload_folder())) / "big.txt"  # where the upload widget puts a visitor's file
    try:
        shutil.copy(big, uploaded)
        with pytest.raises(CalibscopeError, match="the limit is 20.0 MiB"):
            load(kind="file", upload=str(uploaded), context=shared)
    finally:
        shutil.rmtree(uploaded.parent)


def test_build_app_constructs_without_work_and_preselects():
    context = AppContext(default_model="tiny-random-gpt2")
    app = build_app(context=context)
    assert isinstance(app, gr.Blocks)
    dropdown_values = [block.value for block in app.blocks.values() if isinstance(block, gr.Dropdown)]
    assert "tiny-random-gpt2" in dropdown_values and "mixed" in dropdown_values
    labels = [block.label for block in app.blocks.values() if isinstance(block, gr.Tab)]
    assert labels == ["Model & Data", "Dataset", "Activation ranges", "Coverage", "Hessians", "Sensitivity", "Quantize",
                      "Compare", "Imatrix", "Export"]
    assert len(context.models) == 0  # building the page loads no model


def test_model_cache_loads_once_under_concurrency_and_evicts():
    calls = []

    def slow_load(spec, progress):
        calls.append(spec)
        time.sleep(0.2)
        return object()

    cache = ModelCache(capacity=2, loader=slow_load)
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
    first = load(builtin_name="python-docs")["session"]
    second = load(builtin_name="python-code")["session"]
    assert first.corpus_spec.name == "python-docs" and second.corpus_spec.name == "python-code"


def test_cli_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exited:
        cli_main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--share", "--shared-space"):
        assert option in text


def test_an_unknown_hub_model_fails_fast_offline_and_a_shared_space_does_not_suggest_local_folders():
    shared = AppContext(limits=Limits.shared_space(), models=CONTEXT.models)
    with pytest.raises(HubUnavailable) as local:
        load(model="someorg/no-such-model")
    with pytest.raises(HubUnavailable) as space:
        load(model="someorg/no-such-model", context=shared)
    assert "local model directory" in str(local.value) and "builtin:gemma-3-270m" in str(local.value)
    assert "local model directory" not in str(space.value) and "builtin models work offline" in str(space.value)
