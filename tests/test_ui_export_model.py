"""The Export tab's quantized model: a session's quantization run written as a checkpoint, read
back and reloaded, offered for download or written to a new local folder, never over anything."""
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine.errors import CalibscopeError
from tests.test_ui_export import full_session  # noqa: F401  (fixture)
from tests.ui_helpers import CONTEXT, Recorder, build
from ui.context import AppContext
from ui.exports import ExportFolder
from ui.limits import Limits
from ui.sections.quantized_model import CheckpointForm, refresh_runs, run_choices, write_checkpoint
from ui.state import Session
from ui.tabs.hessians import HessianForm, compute_hessians
from ui.tabs.quantize import QuantizeForm, run_quantization

HELD = "python-docs (held-out 10%)"
# per channel: the tiny Llama's 37-wide MLP takes no groups of 128 (compressed-tensors needs groups that divide it)
PER_CHANNEL_GPTQ = QuantizeForm(method="gptq", bits=4, group="per channel", source=HELD, length=64, windows=3)


@pytest.fixture(scope="module")
def quantized_session(full_session):  # noqa: F811
    session = run_quantization(PER_CHANNEL_GPTQ, full_session, CONTEXT, Recorder())["session"]
    return run_quantization(replace(PER_CHANNEL_GPTQ, method="rtn", bits=8), session, CONTEXT, Recorder())["session"]


def fresh(session):
    """The same session with its own, empty download folder (sessions share nothing else here)."""
    return replace(session, exports=ExportFolder())


def test_the_runs_are_listed_newest_chosen(quantized_session):
    assert [label.split(" ·")[0] for label, _ in run_choices(quantized_session)] == [
        "1. W4 per-channel GPTQ", "2. W8 per-channel RTN"]
    assert refresh_runs(quantized_session)["value"] == 2 and refresh_runs(Session())["choices"] == []


def test_a_run_downloads_as_a_checkpoint_that_reloads_to_its_perplexity(quantized_session, tmp_path):
    session = fresh(quantized_session)
    result = write_checkpoint(CheckpointForm(run=1, dtype="model"), session, CONTEXT, Recorder())
    status = result["status"]
    assert "Wrote compressed-tensors checkpoint" in status and "14 quantized layers" in status
    assert "within 0 (exactly)" in status  # in bfloat16 too: the simulation rounds on the scales as stored
    assert "reloaded (transformers from_pretrained)" in status and "equal within 0.1%" in status
    [archive] = result["files"]
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(tmp_path)
    folder = tmp_path / Path(archive).stem
    assert {"config.json", "model.safetensors", "tokenizer.json", "calibscope.json"} <= {p.name for p in folder.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()
    again = write_checkpoint(CheckpointForm(run=1, dtype="model"), session, CONTEXT, Recorder())
    assert again["status"].startswith("**Unchanged since the last click**") and again["files"] == result["files"]
    other = write_checkpoint(CheckpointForm(run=1, dtype="float32", check=False), session, CONTEXT, Recorder())
    assert "float parts in float32" in other["status"] and other["files"] != result["files"]  # another dtype: written


def test_a_local_folder_is_written_once_and_never_over_anything(quantized_session, tmp_path):
    target = tmp_path / "w8"
    form = CheckpointForm(run=2, folder=str(target), check=False)
    result = write_checkpoint(form, fresh(quantized_session), CONTEXT, Recorder())
    assert result["files"] is None and (target / "config.json").is_file() and "reloaded" not in result["status"]
    assert json.loads((target / "calibscope.json").read_text())["dtype"] == "bfloat16"  # the default
    with pytest.raises(CalibscopeError, match="already exists"):
        write_checkpoint(form, fresh(quantized_session), CONTEXT, Recorder())
    shared = AppContext(models=CONTEXT.models, evaluations=CONTEXT.evaluations, limits=Limits.shared_space())
    with pytest.raises(CalibscopeError, match="does not write to its own disk"):
        write_checkpoint(replace(form, folder=str(tmp_path / "other")), fresh(quantized_session), shared, Recorder())


def test_what_cannot_be_written_says_why(quantized_session, full_session):  # noqa: F811
    with pytest.raises(CalibscopeError, match="No quantization run yet"):
        write_checkpoint(CheckpointForm(), fresh(full_session), CONTEXT, Recorder())
    with pytest.raises(CalibscopeError, match="multiple of 8"):  # GPTQ packs 8 four-bit inputs per word; the MLP has 37
        write_checkpoint(CheckpointForm(run=1, fmt="gptq"), fresh(quantized_session), CONTEXT, Recorder())
    rebuilt = build(quantized_session, nsamples=6, edges="64, 128", seed=7)["session"]
    rebuilt = compute_hessians(HessianForm(batch_size=4), rebuilt, CONTEXT, Recorder())["session"]
    with pytest.raises(CalibscopeError, match="no longer holds"):
        write_checkpoint(CheckpointForm(run=1), fresh(rebuilt), CONTEXT, Recorder())


def test_a_run_measured_without_sensitivity_is_written_too(full_session, tmp_path):  # noqa: F811
    """Sensitivity 'none' keeps the weights' own error, which the written weights are checked against
    (the hostile bench found a KeyError here)."""
    session = run_quantization(replace(PER_CHANNEL_GPTQ, method="rtn", bits=8, sensitivity="none"), full_session, CONTEXT,
                               Recorder())["session"]
    assert "weight_error" in session.quantization.layers
    result = write_checkpoint(CheckpointForm(folder=str(tmp_path / "w8"), check=False), fresh(session), CONTEXT, Recorder())
    assert "Wrote compressed-tensors checkpoint" in result["status"]
