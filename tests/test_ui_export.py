"""The Export tab: every artifact downloadable, and each reloads."""
import zipfile
from dataclasses import replace
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
from ui.context import AppContext
from ui.exports import ExportFolder
from ui.limits import Limits
from ui.state import Session
from ui.tabs.activations import collect_statistics
from ui.tabs.export import Artifact, ExportForm
from ui.tabs.export import prepare_downloads as prepare
from ui.tabs.hessians import HessianForm, compute_hessians


@pytest.fixture(scope="module")
def full_session():
    session = build(load(builtin_name="python-docs")["session"], nsamples=6, edges="64, 128")["session"]
    session = collect_statistics(STATS_FORM, session, CONTEXT, Recorder())["session"]
    return compute_hessians(HessianForm(batch_size=4), session, CONTEXT, Recorder())["session"]


ALL = [artifact.value for artifact in Artifact]


def prepare_downloads(fmt, session, artifacts=ALL, context=CONTEXT):
    result = prepare(ExportForm(fmt, artifacts), session, context, Recorder())
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
    assert "not in this session yet: quantization results, comparison" in status
    names = [Path(f).name for f in files]
    assert names == ["calibration-disk.zip", "statistics.zip", "hessians.zip", "report.html", "calibscope-run.json"]
    calibration = unzip(files[0], tmp_path)
    reloaded = datasets.load_from_disk(str(calibration / "dataset"))
    assert reloaded["input_ids"][0] == full_session.calibration.sequences[0].tolist()
    assert Manifest.from_json((calibration / "manifest.json").read_text()) == full_session.calibration.manifest
    stats = StatsReport.load(unzip(files[1], tmp_path))
    assert stats.summary.equals(full_session.stats.summary)
    hessians = HessianReport.load(unzip(files[2], tmp_path))
    assert set(hessians.diagnostics["layer"]) == set(full_session.hessians.diagnostics["layer"])


def test_a_second_click_on_an_unchanged_session_writes_nothing(full_session, tmp_path):
    session = replace(full_session, exports=ExportFolder())
    _, first = prepare_downloads("parquet", session)
    stamps = {f: Path(f).stat().st_mtime_ns for f in first}
    status, second = prepare_downloads("parquet", session)
    assert second == first and {f: Path(f).stat().st_mtime_ns for f in second} == stamps
    assert "written now" not in status and "unchanged since the last click" in status
    dataset, manifest = load_calibration_export(unzip(first[0], tmp_path))
    assert len(dataset) == 6 and manifest.token_sha256 == full_session.calibration.manifest.token_sha256
    _, jsonl = prepare_downloads("jsonl", session)  # another format: the calibration file is replaced, the rest kept
    assert not Path(first[0]).exists() and Path(jsonl[0]).name == "calibration-jsonl.zip" and jsonl[1:3] == first[1:3]
    folder = session.exports.folder
    session.close()
    assert not folder.exists()


def test_only_the_calibration_set_when_that_is_all_you_want(full_session):
    session = replace(full_session, exports=ExportFolder())
    _status, files = prepare_downloads("jsonl", session, artifacts=[Artifact.CALIBRATION.value])
    assert [Path(f).name for f in files] == ["calibration-jsonl.zip"] and session.exports.megabytes() < 1


def test_a_shared_space_caps_what_a_visitor_keeps_for_download(full_session):
    shared = AppContext(limits=Limits(shared=True, max_download_mb=0.0001), models=CONTEXT.models)
    with pytest.raises(CalibscopeError, match="keeps at most"):
        prepare_downloads("disk", replace(full_session, exports=ExportFolder()), artifacts=[Artifact.HESSIANS.value],
                          context=shared)


def test_the_downloaded_run_config_repeats_the_session_headless(full_session, tmp_path):
    _, files = prepare_downloads("jsonl", replace(full_session, exports=ExportFolder()))
    report = Path(files[-2]).read_text()
    assert report.count('class="cs-figure"') >= 5 and "Hessians" in report
    config_path = tmp_path / "calibscope-run.json"
    config_path.write_text(Path(files[-1]).read_text())
    config = load_config(config_path)
    assert config.output == tmp_path / "calibscope-run" and config.export_format == "jsonl"
    assert config.stats == full_session.stats.spec and config.hessians is not None
    written = run(config)
    _, manifest = load_calibration_export(written["calibration"])
    assert manifest.token_sha256 == full_session.calibration.manifest.token_sha256  # the same set, token for token
