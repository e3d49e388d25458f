"""The Export tab: every artifact downloadable, and each reloads."""
import zipfile
from pathlib import Path

import datasets
import pytest

from engine.errors import CalibscopeError
from engine.export import load_calibration_export
from engine.pipeline import load_config, run
from engine.sampling import Manifest
from engine.stats import StatsReport
from engine.stats.hessian_report import HessianReport
from tests.test_ui_activations import FORM as STATS_FORM
from tests.ui_helpers import CONTEXT, Recorder, build, load
from ui.state import Session
from ui.tabs.activations import collect_statistics
from ui.tabs.export import ExportForm
from ui.tabs.export import prepare_downloads as prepare
from ui.tabs.hessians import HessianForm, compute_hessians


@pytest.fixture(scope="module")
def full_session():
    session = build(load(builtin_name="python-docs")["session"], nsamples=6, edges="64, 128")["session"]
    session = collect_statistics(STATS_FORM, session, CONTEXT, Recorder())["session"]
    return compute_hessians(HessianForm(batch_size=4), session, CONTEXT, Recorder())["session"]


def prepare_downloads(fmt, session):
    result = prepare(ExportForm(fmt), session, CONTEXT, Recorder())
    return result["status"], result["files"]


def unzip(path, into):
    with zipfile.ZipFile(path) as archive:
        archive.extractall(into)
    return into / Path(path).stem


def test_export_needs_a_calibration_set():
    with pytest.raises(CalibscopeError, match="Dataset tab first"):
        prepare_downloads("disk", Session())


def test_every_artifact_downloads_and_reloads(full_session, tmp_path):
    status, files = prepare_downloads("disk", full_session)
    assert status.startswith("**Ready**") and "6 samples" in status and "Hessians (14 layers" in status
    names = [Path(f).name for f in files]
    assert names == ["calibration-disk.zip", "manifest.json", "statistics.zip", "hessians.zip", "report.html",
                     "calibscope-run.json"]
    calibration = unzip(files[0], tmp_path)
    reloaded = datasets.load_from_disk(str(calibration / "dataset"))
    assert reloaded["input_ids"][0] == full_session.calibration.sequences[0].tolist()
    assert Manifest.from_json(Path(files[1]).read_text()) == full_session.calibration.manifest
    stats = StatsReport.load(unzip(files[2], tmp_path))
    assert stats.summary.equals(full_session.stats.summary)
    hessians = HessianReport.load(unzip(files[3], tmp_path))
    assert set(hessians.diagnostics["layer"]) == set(full_session.hessians.diagnostics["layer"])


def test_parquet_export_and_fresh_folders(full_session, tmp_path):
    _, first = prepare_downloads("parquet", full_session)
    _, second = prepare_downloads("parquet", full_session)
    assert Path(first[0]).parent != Path(second[0]).parent  # nothing the user downloaded is overwritten
    dataset, manifest = load_calibration_export(unzip(first[0], tmp_path))
    assert len(dataset) == 6 and manifest.token_sha256 == full_session.calibration.manifest.token_sha256


def test_the_downloaded_run_config_repeats_the_session_headless(full_session, tmp_path):
    _, files = prepare_downloads("jsonl", full_session)
    report = Path(files[-2]).read_text()
    assert report.count('class="plotly-graph-div"') >= 5 and "Hessians" in report
    config_path = tmp_path / "calibscope-run.json"
    config_path.write_text(Path(files[-1]).read_text())
    config = load_config(config_path)
    assert config.output == tmp_path / "calibscope-run" and config.export_format == "jsonl"
    assert config.stats == full_session.stats.spec and config.hessians is not None
    written = run(config)
    _, manifest = load_calibration_export(written["calibration"])
    assert manifest.token_sha256 == full_session.calibration.manifest.token_sha256  # the same set, token for token
