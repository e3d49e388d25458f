"""The session as a ``calibscope run`` config: download it, run it headless, get the same artifacts."""
from __future__ import annotations

from pathlib import Path

from engine.export import ExportFormat
from engine.pipeline import RunConfig, config_as_json
from engine.sampling import spec_from_manifest
from engine.specs import CorpusKind
from engine.stats import HessianSpec
from ui.state import Session

OUTPUT = "calibscope-run"


def session_config(session: Session, export_format: ExportFormat) -> tuple[dict, list[str]]:
    """The config (JSON-ready) that reproduces this session's set, statistics and Hessians, and
    notes on what the user has to adjust (an uploaded corpus lives in a temporary folder here)."""
    calibration = session.require_calibration()
    hessians = HessianSpec(**session.hessians.meta["spec"]) if session.hessians is not None else None
    quantize = tuple(report.meta["run"] for report in session.quant_runs if "run" in report.meta)
    config = RunConfig(output=Path(OUTPUT), model=session.model_spec, corpus=session.corpus_spec,
                       sampling=spec_from_manifest(calibration.manifest),
                       stats=session.stats.spec if session.stats is not None else None,
                       hessians=hessians, export_format=export_format, quantize=quantize, compare=session.comparison_run)
    data = config_as_json(config)
    data["output"] = OUTPUT  # relative to the config file, wherever it is saved
    notes = []
    if session.corpus_spec.kind is CorpusKind.FILE:
        name = Path(session.corpus_spec.name).name
        data["corpus"]["name"] = name
        notes.append(f"the corpus was an upload: put '{name}' beside the config")
    for number, run in enumerate(data.get("quantize", []), 1):
        if run["evaluation"]["file"]:
            name = Path(run["evaluation"]["file"]).name
            run["evaluation"]["file"] = name
            notes.append(f"quantization run {number} was evaluated on an upload: put '{name}' beside the config")
    repeated = ([f"{len(quantize)} quantization run(s)"] * bool(quantize)
                + ["the comparison"] * (session.comparison_run is not None))
    notes.append("it repeats the set, statistics and Hessians" + (f", {' and '.join(repeated)}" if repeated else ""))
    return data, notes
