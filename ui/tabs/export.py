"""Export: download what this session built, in the forms quantization tools read.

Each artifact is written once per state of the session into the visitor's own folder (ui.exports):
a second click on an unchanged session writes nothing, a changed artifact replaces its old file,
and the folder goes with the session. The visitor picks what to prepare: the calibration set alone
is one small file; the Hessians (hundreds of MB) only when asked for.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

import gradio as gr
import pandas as pd

from engine.atomic import write_file
from engine.errors import CalibscopeError
from engine.export import ExportFormat, export_format, save_calibration_set
from engine.figures import scheme_label
from engine.guard import held_bytes
from engine.progress import Progress, no_progress
from engine.run_report import run_report
from engine.specs import labels
from ui.context import AppContext
from ui.exports import zipped
from ui.run_config import session_config
from ui.sections.quantized_model import build_section
from ui.state import Session
from ui.widgets import status_block
from ui.wiring import connect

FORMAT_LABELS = {ExportFormat.DISK: "datasets folder (load_from_disk), zipped", ExportFormat.PARQUET: "parquet",
                 ExportFormat.JSONL: "jsonl", ExportFormat.PT: "torch list of [1, n] tensors (optimum's GPTQQuantizer)"}

# The help under each widget, by widget: what the control does and where its numbers come from.
HELP = {
    "artifacts": "Each file is written once and reused until what it holds changes",
}


class Artifact(str, Enum):
    """What can be downloaded; the values are the checkbox labels."""

    CALIBRATION = "calibration set + manifest"
    STATISTICS = "activation statistics"
    HESSIANS = "Hessians"
    QUANTIZATION = "quantization results"
    COMPARISON = "comparison"
    REPORT = "HTML report"
    CONFIG = "run config"


DEFAULT_ARTIFACTS = [a.value for a in Artifact if a is not Artifact.HESSIANS]  # the Hessians are big: on request


@dataclass(frozen=True)
class ExportForm:
    fmt: str = ExportFormat.DISK.value
    artifacts: list[str] = field(default_factory=lambda: list(DEFAULT_ARTIFACTS))


def _stamp(report) -> tuple | None:
    """What identifies a collected result: its set, its settings and when it was made."""
    return None if report is None else (report.meta.get("calibration_sha256"), json.dumps(report.meta.get("spec"), default=str),
                                         str(getattr(report, "spec", "")), report.meta.get("seconds"))


def _identities(session: Session, fmt: ExportFormat) -> dict[Artifact, tuple]:
    calibration = session.calibration.manifest.token_sha256
    runs = tuple((scheme_label(r), r.meta.get("evaluation"), r.quantized_perplexity) for r in session.quant_runs)
    comparison = (None if session.comparison is None else
                  int(pd.util.hash_pandas_object(session.comparison, index=False).sum()))
    everything = (calibration, _stamp(session.stats), _stamp(session.hessians), runs, comparison)
    return {Artifact.CALIBRATION: (calibration, fmt), Artifact.STATISTICS: _stamp(session.stats),
            Artifact.HESSIANS: _stamp(session.hessians), Artifact.QUANTIZATION: runs, Artifact.COMPARISON: comparison,
            Artifact.REPORT: everything, Artifact.CONFIG: (*everything, fmt)}


def _writers(session: Session, context: AppContext, fmt: ExportFormat) -> dict[Artifact, tuple]:
    """Per artifact: (whether the session has it, what it is in a few words, how to write it into a folder)."""
    calibration, tokenizer = session.calibration, context.model(session).tokenizer

    def calibration_files(folder):
        save_calibration_set(calibration, tokenizer, folder / f"calibration-{fmt.value}", fmt=fmt)
        return zipped(folder / f"calibration-{fmt.value}")

    def quantization_file(folder):
        rows = [{"run": n, "scheme": scheme_label(r), "evaluation": r.meta["evaluation"], **row}
                for n, r in enumerate(session.quant_runs, 1) for row in r.layers.to_dict(orient="records")]
        return _written(folder / "quantization-layers.csv", pd.DataFrame(rows).to_csv(index=False))

    def report_file(folder):
        return _written(folder / "report.html", run_report(
            context.model(session).info, session.corpus_spec.label, session.corpus, calibration, session.stats,
            session.hessians, session.quant_runs, session.comparison))

    def config_file(folder):
        config, _ = session_config(session, fmt)
        return _written(folder / "calibscope-run.json", json.dumps(config, indent=2))

    stats, hessians = session.stats, session.hessians
    return {
        Artifact.CALIBRATION: (True, f"{len(calibration):,} samples, {FORMAT_LABELS[fmt]}", calibration_files),
        Artifact.STATISTICS: (stats is not None, stats and f"{stats.meta['observed']} tensors",
                              lambda folder: zipped(stats.save(folder / "statistics"), compress=False)),
        Artifact.HESSIANS: (hessians is not None and bool(hessians.hessians),
                            hessians and f"{hessians.meta['layers']} layers, {hessians.meta['memory_mb']:,.0f} MB",
                            lambda folder: zipped(hessians.save(folder / "hessians"), compress=False)),
        Artifact.QUANTIZATION: (bool(session.quant_runs), f"{len(session.quant_runs)} run(s)", quantization_file),
        Artifact.COMPARISON: (session.comparison is not None, session.comparison is not None
                              and f"{len(session.comparison)} measurements",
                              lambda folder: _written(folder / "comparison-runs.csv", session.comparison.to_csv(index=False))),
        Artifact.REPORT: (True, "every figure, works offline", report_file),
        Artifact.CONFIG: (True, "`calibscope run calibscope-run.json` repeats the session", config_file),
    }


SMALL_FILE = 2**20  # CSV tables and the run config
REPORT_BYTES = 4 * 2**20  # the HTML report with plotly.js embedded (1.9 MB measured)


def _estimate(artifact: Artifact, session: Session) -> int:
    """Bytes the artifact will take on disk (what the disk quota reserves before it is written)."""
    if artifact is Artifact.CALIBRATION:
        return int(session.calibration.lengths.sum()) * 8 * 3 + SMALL_FILE  # ids, mask and text, uncompressed
    if artifact is Artifact.STATISTICS:
        return held_bytes(session.stats) + SMALL_FILE
    if artifact is Artifact.HESSIANS:
        return int(session.hessians.meta["memory_mb"] * 2**20) + SMALL_FILE
    return REPORT_BYTES if artifact is Artifact.REPORT else SMALL_FILE


def _written(path, text: str):
    write_file(path, text)
    return path


def prepare_downloads(form: ExportForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    """The chosen artifacts of the session, each written only when it changed since the last click."""
    session.require_calibration()
    fmt = export_format(form.fmt)
    chosen = [Artifact(label) for label in (form.artifacts or [])]
    if not chosen:
        raise CalibscopeError("Choose at least one thing to download.")
    writers, identities = _writers(session, context, fmt), _identities(session, fmt)
    files, written, kept, missing = [], [], [], []
    for number, artifact in enumerate(chosen):
        present, what, write = writers[artifact]
        if not present:
            missing.append(artifact.value)
            continue
        if artifact is Artifact.HESSIANS:
            context.limits.check_downloads(session.exports.megabytes(), session.hessians.meta["memory_mb"], "The Hessians")
        progress(number / len(chosen), f"Preparing the {artifact.value}")
        path, fresh = session.exports.file(artifact.value, identities[artifact], write, _estimate(artifact, session))
        files.append(str(path))
        (written if fresh else kept).append(f"{artifact.value} ({what})")
    lines = [f"**Ready**: {len(files)} file(s), {session.exports.megabytes():,.1f} MB."]
    lines += [f"- written now: {'; '.join(written)}"] if written else []
    lines += [f"- unchanged since the last click, not written again: {'; '.join(kept)}"] if kept else []
    lines += [f"- not in this session yet: {', '.join(missing)}"] if missing else []
    if Artifact.CONFIG in chosen:
        lines += [f"- the run config: {note}" for note in session_config(session, fmt)[1]]
    return {"status": "\n".join(lines), "files": files}


def build_tab(session: gr.State, context: AppContext) -> None:
    gr.Markdown(
        "Download the calibration set with its manifest (rebuild it bit for bit with "
        "`engine.sampling.rebuild`), the statistics and Hessians collected in this session "
        "(safetensors + JSON; Hessians as one tensor per module name), the quantization and comparison "
        "results, an HTML report with every figure, and the run config that repeats this session headless."
    )
    with gr.Row():
        artifacts = gr.CheckboxGroup(labels(Artifact), value=DEFAULT_ARTIFACTS, label="Prepare", scale=3,
                                     info=HELP["artifacts"])
        fmt = gr.Radio([(label, value.value) for value, label in FORMAT_LABELS.items()], value=ExportFormat.DISK.value,
                       label="Calibration set format", scale=2)
    run = gr.Button("Prepare downloads", variant="primary")
    status = status_block(session, "What the session has is prepared; what it lacks is listed.")
    files = gr.File(label="Downloads", file_count="multiple", interactive=False)
    connect(run.click, prepare_downloads, ExportForm, {"fmt": fmt, "artifacts": artifacts}, session,
            {"status": status, "files": files}, context, api_name="prepare_downloads", status=status, heavy=False)
    build_section(session, context)
