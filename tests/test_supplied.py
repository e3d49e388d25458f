"""Pre-tokenized input: windows made elsewhere become a CalibrationSet with provenance "supplied"."""
from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

from engine.errors import SamplingError
from engine.sampling.supplied import supplied_set
from engine.stats.hessian_report import collect_hessians
from engine.stats.specs import HessianSpec
from tests.ui_helpers import CONTEXT, Recorder, load
from ui.tabs.dataset import WindowsForm, load_token_windows

WINDOWS = [[1, 72, 101, 108, 108, 111], [1, 32, 119, 111, 114], [1, 100, 33, 33, 33, 33, 33]]


def test_every_form_gives_the_same_set_and_manifest(tiny_llama, tmp_path):
    tokenizer = tiny_llama.tokenizer
    padded = [w + [0] * (7 - len(w)) for w in WINDOWS]
    masks = [[1] * len(w) + [0] * (7 - len(w)) for w in WINDOWS]
    table = datasets.Dataset.from_dict({"input_ids": padded, "attention_mask": masks})
    table.to_parquet(str(tmp_path / "w.parquet"))
    table.to_json(str(tmp_path / "w.jsonl"))
    torch.save([torch.tensor(w) for w in WINDOWS], tmp_path / "w.pt")
    forms = [WINDOWS, table, {"input_ids": padded, "attention_mask": masks}, tmp_path / "w.parquet", tmp_path / "w.jsonl",
             tmp_path / "w.pt"]
    sets = [supplied_set(form, tokenizer) for form in forms]
    for found in sets:
        assert [s.tolist() for s in found.sequences] == WINDOWS
        assert found.manifest.token_sha256 == sets[0].manifest.token_sha256
    first = sets[0]
    assert first.manifest.strategy == "supplied" and first.manifest.corpus["provenance"] == "supplied"
    assert first.manifest.tokenizer["prefix_ids"] == [1] and "3 of them start with <bos>" in first.notes[0]
    assert first.spec.nsamples == 3 and first.spec.length == 7 and sets[3].spec.path.endswith("w.parquet")
    square = supplied_set(torch.tensor([[1, 2, 3], [1, 4, 5]]), tokenizer, limit=1)
    assert len(square) == 1 and square.lengths.tolist() == [3]


def test_a_supplied_set_runs_every_pass_as_a_built_one(tiny_llama):
    calibration = supplied_set(WINDOWS, tiny_llama.tokenizer)
    report = collect_hessians(tiny_llama, calibration, HessianSpec(diagnostics="none"))
    assert report.meta["tokens"] == sum(len(w) for w in WINDOWS) and len(report.hessians) == 8


@pytest.mark.parametrize("given, words", [
    ([], "No token windows"), ([[1, 2], []], "Window 1 is empty"), ([[1, 99999]], "outside this tokenizer's"),
    (torch.zeros(2, 3, 4, dtype=torch.long), "must be 2-D"), ("/no/such/windows.parquet", "No token windows at"),
])
def test_bad_windows_say_what_is_wrong(tiny_llama, given, words):
    with pytest.raises(SamplingError, match=words):
        supplied_set(given, tiny_llama.tokenizer)


def test_too_long_windows_and_tables_without_input_ids_are_refused(tiny_llama, tmp_path):
    with pytest.raises(SamplingError, match="more than the model's 4 positions"):
        supplied_set(WINDOWS, tiny_llama.tokenizer, max_positions=4)
    datasets.Dataset.from_dict({"text": ["a"]}).to_json(str(tmp_path / "t.jsonl"))
    with pytest.raises(SamplingError, match="No 'input_ids' column"):
        supplied_set(tmp_path / "t.jsonl", tiny_llama.tokenizer)


def test_the_dataset_tab_loads_windows_from_a_file(tmp_path):
    session = load(builtin_name="python-docs")["session"]
    datasets.Dataset.from_dict({"input_ids": WINDOWS}).to_parquet(str(tmp_path / "mine.parquet"))
    result = load_token_windows(WindowsForm(str(tmp_path / "mine.parquet")), session, CONTEXT, Recorder())
    assert result["status"].startswith("**Loaded** 3 samples, 18 tokens")
    assert result["session"].calibration.manifest.strategy == "supplied" and len(result["preview"]) == 3
    with pytest.raises(SamplingError, match="Choose a file of token windows"):
        load_token_windows(WindowsForm(), session, CONTEXT, Recorder())


def test_a_run_config_takes_supplied_windows(tmp_path):
    from ui.cli import main

    np.save(tmp_path / "windows.npy", np.array([[1, 10, 11, 12], [1, 13, 14, 15]], dtype=np.int64))
    config = {"output": "out", "model": {"name": "tiny-random-llama"}, "corpus": {"kind": "builtin", "name": "python-docs"},
              "sampling": {"strategy": "supplied", "path": "windows.npy"}, "hessians": {}}
    (tmp_path / "run.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exited:
        main(["run", str(tmp_path / "run.json")])
    assert exited.value.code == 0
    manifest = json.loads((tmp_path / "out" / "calibration" / "manifest.json").read_text())
    assert manifest["strategy"] == "supplied" and manifest["samples"] == 2 and manifest["params"]["path"].endswith("windows.npy")
