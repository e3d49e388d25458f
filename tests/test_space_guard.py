"""One guard for everything a visitor names: on a shared Space no field or upload reaches a file of
the server (a path, a URL scheme, a `..`, a folder of the app's working directory, a file builder of
the datasets library, a file outside the upload folder); locally everything stays allowed. Tested
on the policy, then field by field through the dashboard's handlers under the app's guard."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from engine.errors import CalibscopeError, Refused
from engine.guard import Policy
from tests.ui_helpers import CONTEXT, build, handled, load
from ui.context import AppContext
from ui.limits import Limits, upload_folder
from ui.tabs.dataset import WindowsForm, load_token_windows
from ui.tabs.imatrix import TEXT_FILE, CollectForm, LoadForm, load_file
from ui.tabs.imatrix import collect as collect_imatrix

SHARED = Policy(local_paths=False, upload_roots=(Path(tempfile.gettempdir()) / "uploads-of-this-test",))
LOCAL = Policy()
NOT_HUB_IDS = ["/etc", "~/models", "../secrets", "a/../../b", "./engine", "file:///etc/passwd", "hf://datasets/x",
               "s3://bucket/key", "a/b/c", "C:\\Windows", "x" * 200, "", "   ", "name with spaces", "a\nb"]


@pytest.mark.parametrize("name", NOT_HUB_IDS)
def test_a_shared_space_takes_hub_ids_only_for_models_and_datasets(name):
    with pytest.raises(Refused):
        SHARED.model_name(name)
    with pytest.raises(Refused):
        SHARED.dataset_name(name)


def test_names_of_folders_of_the_app_are_refused_even_when_they_look_like_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    with pytest.raises(Refused, match="is not a Hugging Face id"):
        SHARED.dataset_name("results")  # load_dataset would read the folder results/ of the working directory
    assert SHARED.dataset_name("allenai/c4") == "allenai/c4" and SHARED.model_name("Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    assert SHARED.model_name("builtin:gemma-3-270m") == "builtin:gemma-3-270m"


@pytest.mark.parametrize("builder", ["json", "csv", "text", "parquet", "arrow", "imagefolder", "webdataset", "PANDAS"])
def test_the_datasets_librarys_local_file_readers_are_refused(builder):
    with pytest.raises(Refused, match="reader of local files"):
        SHARED.dataset_name(builder)


@pytest.mark.parametrize("word", ["../x", "a/b", "train; rm", "x" * 300, "split\n"])
def test_configs_splits_and_revisions_cannot_carry_a_path(word):
    with pytest.raises(Refused):
        SHARED.hub_word(word, "split")
    assert SHARED.hub_word("train[:10%]", "split") == "train[:10%]" and SHARED.hub_word(None, "revision") is None


def test_an_upload_must_be_a_regular_file_inside_the_upload_folder(tmp_path):
    root = Path(SHARED.upload_roots[0])
    root.mkdir(exist_ok=True)
    inside = Path(tempfile.mkdtemp(dir=root)) / "mine.txt"
    inside.write_text("text")
    link = inside.parent / "link.txt"
    os.symlink("/etc/hostname", link)
    try:
        assert SHARED.upload(inside, "corpus file") == inside.resolve()
        for outside in ("/etc/hostname", str(tmp_path), str(link), str(inside.parent), str(root / ".." / "etc"), "/no/such"):
            with pytest.raises(Refused):
                SHARED.upload(outside, "corpus file")
    finally:
        shutil.rmtree(inside.parent)


def test_locally_everything_stays_allowed(tmp_path):
    assert LOCAL.model_name(str(tmp_path)) == str(tmp_path) and LOCAL.dataset_name("json") == "json"
    assert LOCAL.upload(tmp_path / "any.txt", "file") == tmp_path / "any.txt"
    assert LOCAL.local_folder(tmp_path, "a folder") == tmp_path and LOCAL.hub_word("../x", "split") == "../x"
    with pytest.raises(Refused, match="does not write to its own disk"):
        SHARED.local_folder(tmp_path, "the checkpoint folder")


@pytest.fixture(scope="module")
def shared():
    return AppContext(limits=Limits.shared_space(), models=CONTEXT.models, evaluations=CONTEXT.evaluations)


@pytest.fixture(scope="module")
def server_file():
    """A file of the server that no visitor may read: a secret beside other visitors' uploads."""
    folder = Path(tempfile.mkdtemp())
    secret = folder / "secret.txt"
    secret.write_text("a server secret long enough to be a document " * 20)
    yield secret
    shutil.rmtree(folder)


@pytest.mark.parametrize("fields, words", [
    ({"model": "/tmp"}, "is not a Hugging Face id"),
    ({"model": "../models/x"}, "is not a Hugging Face id"),
    ({"kind": "hub", "hub_name": "/tmp"}, "is not a Hugging Face id"),
    ({"kind": "hub", "hub_name": "json"}, "reader of local files"),
    ({"kind": "hub", "hub_name": "someorg/data", "hub_config": "../../etc"}, "does not pass on"),
    ({"kind": "hub", "hub_name": "someorg/data", "hub_split": "train/../x"}, "does not pass on"),
])
def test_model_and_data_fields_are_refused_through_the_handler(shared, fields, words):
    with pytest.raises(CalibscopeError, match=words):
        load(context=shared, **fields)


def test_every_upload_field_refuses_a_file_of_the_server(shared, server_file):
    session = build(load(context=shared)["session"], context=shared, nsamples=4)["session"]
    with pytest.raises(Refused, match="must be a file you uploaded here"):
        load(context=shared, kind="file", upload=str(server_file))
    with pytest.raises(Refused, match="must be a file you uploaded here"):
        handled(load_token_windows, WindowsForm(str(server_file)), session, shared)
    with pytest.raises(Refused, match="must be a file you uploaded here"):
        handled(load_file, LoadForm(str(server_file)), session, shared)
    with pytest.raises(Refused, match="must be a file you uploaded here"):
        handled(collect_imatrix, CollectForm(source=TEXT_FILE, text_file=str(server_file), chunks=2, n_ctx=32), session, shared)
    from engine.experiments import UPLOADED
    from ui.tabs.quantize import QuantizeForm, run_quantization

    with pytest.raises(Refused, match="must be a file you uploaded here"):
        handled(run_quantization, QuantizeForm(preset="W4 g128 RTN", source=UPLOADED, upload=str(server_file)), session, shared)


def test_an_upload_of_the_visitor_is_read_on_a_shared_space(shared):
    uploaded = Path(tempfile.mkdtemp(dir=upload_folder())) / "mine.txt"
    uploaded.write_text("A paragraph of calibration text that is long enough.\n\n" * 40)
    try:
        assert "**Loaded**" in load(context=shared, kind="file", upload=str(uploaded))["status"]
    finally:
        shutil.rmtree(uploaded.parent)


def test_cheap_refusals_happen_before_the_queue_on_the_field_at_fault(shared):
    """The validator Gradio runs before it queues a request: a path as model id is refused on the
    model field, a batch over the Space's cap on the batch field, and a valid form passes."""
    from ui.tabs import activations, model_data
    from ui.wiring import gradio_validator

    def verdicts(check, form, context, **values):
        names = list(form.__dataclass_fields__)
        given = {**form().__dict__, **values}
        return dict(zip([*names, "session"], gradio_validator(check, form, names, context)(*[given[n] for n in names], None)))

    refused = verdicts(model_data.check, model_data.ModelDataForm, shared, model="/etc")
    assert refused["model"]["is_valid"] is False and "is not a Hugging Face id" in refused["model"]["message"]
    assert all(v["is_valid"] for name, v in refused.items() if name != "model")
    batch = verdicts(activations.check, activations.StatsForm, shared, batch_size=100_000)
    assert batch["batch_size"]["is_valid"] is False and "more than the 32 allowed" in batch["batch_size"]["message"]
    assert all(v["is_valid"] for v in verdicts(model_data.check, model_data.ModelDataForm, shared,
                                               model="tiny-random-llama").values())
