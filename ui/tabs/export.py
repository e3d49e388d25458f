"""Export: download what this session built, in the forms quantization tools read."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from engine.atomic import write_file
from engine.export import ExportFormat, export_format, save_calibration_set
from engine.progress import Progress, no_progress
from engine.run_report import run_report
from ui.context import AppContext
from ui.run_config import session_config
from ui.state import Session
from ui.widgets import context_line
from ui.wiring import connect

FORMAT_LABELS = {ExportFormat.DISK: "datasets folder (load_from_disk), zipped", ExportFormat.PARQUET: "parquet",
                 ExportFormat.JSONL: "jsonl"}


@dataclass(frozen=True)
class ExportForm:
    fmt: str = ExportFormat.DISK.value


def _zip(folder: Path) -> Path:
    """folder -> folder.zip beside it (the archive keeps the folder's name at its root)."""
    return Path(shutil.make_archive(str(folder), "zip", root_dir=folder.parent, base_dir=folder.name))


def prepare_downloads(form: ExportForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    """Write every artifact of the session into a fresh folder and return the files to download."""
    calibration = session.require_calibration()
    fmt = export_format(form.fmt)
    loaded = context.model(session)
    folder = Path(tempfile.mkdtemp(prefix="calibscope-export-"))  # fresh per request: nothing is overwritten
    files = [_zip(save_calibration_set(calibration, loaded.tokenizer, folder / f"calibration-{fmt.value}", fmt=fmt))]
    manifest = folder / "manifest.json"
    write_file(manifest, calibration.manifest.to_json())
    files.append(manifest)
    made = [f"calibration set ({len(calibration):,} samples, {FORMAT_LABELS[fmt]})", "manifest"]
    if session.stats is not None:
        files.append(_zip(session.stats.save(folder / "statistics")))
        made.append(f"activation statistics ({session.stats.meta['observed']} tensors)")
    if session.hessians is not None:
        files.append(_zip(session.hessians.save(folder / "hessians")))
        made.append(f"Hessians ({session.hessians.meta['layers']} layers, {session.hessians.meta['memory_mb']:,.0f} MB)")
    if session.quantization is not None:
        table = folder / "quantization-layers.csv"
        write_file(table, session.quantization.layers.to_csv(index=False))
        files.append(table)
        made.append(f"per-layer quantization results ({session.quantization.spec.label()})")
    if session.comparison is not None:
        runs = folder / "comparison-runs.csv"
        write_file(runs, session.comparison.to_csv(index=False))
        files.append(runs)
        made.append(f"comparison ({len(session.comparison)} measurements)")
    report = folder / "report.html"
    write_file(report, run_report(loaded.info, session.corpus_spec.label, session.corpus, calibration, session.stats,
                                  session.hessians, session.quant_runs, session.comparison))
    config, notes = session_config(session, fmt)
    config_file = folder / "calibscope-run.json"
    write_file(config_file, json.dumps(config, indent=2))
    files += [report, config_file]
    made += ["HTML report with every figure (works offline)", "run config (`calibscope run calibscope-run.json`"
             + "".join(f"; {note}" for note in notes) + ")"]
    return {"status": "**Ready**: " + "; ".join(made) + ".", "files": [str(f) for f in files]}


def build_tab(session: gr.State, context: AppContext) -> None:
    gr.Markdown(
        "Download the calibration set with its manifest (rebuild it bit for bit with "
        "`engine.sampling.rebuild`), the statistics and Hessians collected in this session "
        "(safetensors + JSON; Hessians as one tensor per module name), the quantization results, "
        "an HTML report with every figure, and the run config that repeats this session headless."
    )
    with gr.Row():
        fmt = gr.Radio([(label, value.value) for value, label in FORMAT_LABELS.items()], value=ExportFormat.DISK.value,
                       label="Calibration set format")
        run = gr.Button("Prepare downloads", variant="primary", scale=0)
    context_line(session)
    status = gr.Markdown("Statistics, Hessians and results are included when this session has them.",
                         elem_classes="cs-status")
    files = gr.File(label="Downloads", file_count="multiple", interactive=False)
    connect(run.click, prepare_downloads, ExportForm, {"fmt": fmt}, session, {"status": status, "files": files}, context,
            api_name="prepare_downloads", status=status, heavy=False)
