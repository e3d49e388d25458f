import datasets
import numpy as np
import pytest
import torch

from engine.errors import ExportError
from engine.export import ExportFormat, load_calibration_export, save_calibration_set
from engine.sampling import LengthStratifiedSpec, build


@pytest.fixture(scope="module")
def calibration(tiny_llama):
    texts = [("abc " * n).strip() for n in (5, 20, 40, 80, 120, 10, 60, 30)]
    data = datasets.Dataset.from_dict({"text": texts, "source": [f"d{i}" for i in range(8)], "row_id": list(range(8))})
    return build(data, tiny_llama.tokenizer, LengthStratifiedSpec(nsamples=6, edges=(64, 256, 512)))


@pytest.mark.parametrize("fmt", [f.value for f in ExportFormat])
def test_export_round_trip_each_format(tmp_path, tiny_llama, calibration, fmt):
    target = save_calibration_set(calibration, tiny_llama.tokenizer, tmp_path / "calib", fmt=fmt)
    dataset, manifest = load_calibration_export(target)
    assert manifest == calibration.manifest
    assert len(dataset) == len(calibration)
    for row, sequence, provenance in zip(dataset, calibration.sequences, calibration.provenance):
        assert row["input_ids"] == sequence.tolist() and row["attention_mask"] == [1] * len(sequence)
        if fmt == ExportFormat.PT:
            continue  # ids and masks only: the provenance is in the manifest
        assert (row["row_id"], row["source"], row["bucket"]) == (provenance.row_id, provenance.source, provenance.bucket)
        assert row["text"].startswith("abc")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_pt_export_is_optimums_tokenized_form(tmp_path, tiny_llama, calibration):
    """optimum's collate unpacks each sample's shape as (batch, length) and concatenates on dim 0."""
    target = save_calibration_set(calibration, tiny_llama.tokenizer, tmp_path / "calib", fmt="pt")
    samples = torch.load(target / "calibration.pt", weights_only=True)
    assert isinstance(samples, list) and len(samples) == len(calibration)
    for sample, sequence in zip(samples, calibration.sequences):
        assert set(sample) == {"input_ids", "attention_mask"}
        assert sample["input_ids"].dtype == torch.long and sample["input_ids"].shape == (1, len(sequence))
        assert sample["input_ids"][0].tolist() == sequence.tolist() and bool(sample["attention_mask"].all())


def test_disk_export_loads_with_datasets(tmp_path, tiny_llama, calibration):
    target = save_calibration_set(calibration, tiny_llama.tokenizer, tmp_path / "calib")
    reloaded = datasets.load_from_disk(str(target / "dataset"))
    assert np.array_equal(np.array(reloaded[0]["input_ids"]), calibration.sequences[0])


def test_export_never_overwrites_unless_asked(tmp_path, tiny_llama, calibration):
    target = save_calibration_set(calibration, tiny_llama.tokenizer, tmp_path / "calib", fmt="jsonl")
    before = (target / "manifest.json").read_text()
    with pytest.raises(ExportError, match="already exists"):
        save_calibration_set(calibration, tiny_llama.tokenizer, target, fmt="parquet")
    assert (target / "manifest.json").read_text() == before and (target / "calibration.jsonl").is_file()
    save_calibration_set(calibration, tiny_llama.tokenizer, target, fmt="parquet", overwrite=True)
    assert (target / "calibration.parquet").is_file() and not (target / "calibration.jsonl").exists()


def test_failed_export_leaves_nothing(tmp_path, tiny_llama, calibration, monkeypatch):
    import engine.export.calibration as export

    monkeypatch.setattr(export, "_write_samples", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(ExportError, match="No space left"):
        save_calibration_set(calibration, tiny_llama.tokenizer, tmp_path / "calib")
    assert list(tmp_path.iterdir()) == []


def test_bad_format_and_foreign_folder(tmp_path, tiny_llama, calibration):
    with pytest.raises(ExportError, match="export format=.csv. is not supported"):
        save_calibration_set(calibration, tiny_llama.tokenizer, tmp_path / "x", fmt="csv")
    with pytest.raises(ExportError, match="not a calibscope export"):
        load_calibration_export(tmp_path)


def test_report_figures_carry_their_float_arrays_in_single_precision():
    import base64
    import json

    import numpy as np
    import plotly.graph_objects as go

    from engine.html_report import _single_precision

    values = np.array([0.1, 12345.678, np.pi, -2.5e-7])
    figure = json.loads(go.Figure(go.Scatter(x=np.arange(4), y=values, name="a")).to_json())
    compact = _single_precision(figure)
    y = compact["data"][0]["y"]
    assert y["dtype"] == "f4" and compact["data"][0]["name"] == "a"
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(y["bdata"]), dtype="<f4"), values, rtol=1e-7)
    assert compact["data"][0]["x"] == figure["data"][0]["x"]  # integer arrays stay as they are
    assert len(json.dumps(compact)) < len(json.dumps(figure))
