"""Headless runs: a TOML or JSON config -> the same specs as the dashboard -> every artifact + an HTML report."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from engine.atomic import write_file
from engine.corpus import load_corpus
from engine.errors import CalibscopeError, SpecError
from engine.experiments.evaluations import EvaluationCache
from engine.experiments.runs import ComparisonRun, QuantRun, as_json, comparison_run_from, quant_run_from
from engine.export import ExportFormat, save_calibration_set
from engine.imatrix import ImatrixSpec, collect_imatrix, write_imatrix
from engine.models import load_model
from engine.progress import Progress, labelled, no_progress, scaled
from engine.run_report import run_report
from engine.runner import distributed
from engine.sampling import SamplingSpec, Strategy, build, spec_from_params
from engine.sampling.specs import SuppliedSpec
from engine.sampling.supplied import supplied_set
from engine.specs import CorpusSpec, ModelSpec, choice
from engine.stats import StatsSpec, collect
from engine.stats.collect import memory_plan as stats_plan
from engine.stats.hessian_report import collect_hessians
from engine.stats.hessian_report import memory_plan as hessian_plan
from engine.stats.specs import HessianSpec


@dataclass(frozen=True)
class RunConfig:
    output: Path
    model: ModelSpec
    corpus: CorpusSpec
    sampling: SamplingSpec
    stats: StatsSpec | None
    hessians: HessianSpec | None
    imatrix: ImatrixSpec | None = None
    export_format: ExportFormat = ExportFormat.DISK
    quantize: tuple[QuantRun, ...] = ()
    compare: ComparisonRun | None = None


def _spec(kind: type, values: dict, section_name: str):
    fields = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise SpecError(f"[{section_name}] has unknown keys {unknown}; allowed: {', '.join(sorted(fields))}.")
    return kind(**values)


def _run(parse, values: dict, section_name: str):
    try:
        return parse(values)
    except TypeError as error:  # an unknown key
        raise SpecError(f"[{section_name}] {error}") from None


def parse_config(data: dict, base: Path = Path(".")) -> RunConfig:
    """Specs from a config dictionary (the TOML/JSON content); SpecError on anything wrong."""
    if "output" not in data:
        raise SpecError("The config needs an `output` folder for the artifacts.")
    sampling = dict(data.get("sampling", {}))
    strategy = sampling.pop("strategy", Strategy.LENGTH_STRATIFIED.value)
    if strategy == Strategy.SUPPLIED.value and sampling.get("path"):  # token windows, relative to the config
        sampling["path"] = str((base / sampling["path"]).expanduser().resolve())
    export_format = choice(ExportFormat, data.get("export", {}).get("format", ExportFormat.DISK), "[export] format")
    return RunConfig(
        output=(base / data["output"]).resolve(),
        model=_spec(ModelSpec, data.get("model", {}), "model"),
        corpus=_spec(CorpusSpec, data.get("corpus", {}), "corpus"),
        sampling=spec_from_params(strategy, sampling),
        stats=_spec(StatsSpec, data["stats"], "stats") if "stats" in data else None,
        hessians=_spec(HessianSpec, data["hessians"], "hessians") if "hessians" in data else None,
        imatrix=_spec(ImatrixSpec, data["imatrix"], "imatrix") if "imatrix" in data else None,
        quantize=tuple(_run(quant_run_from, values, "quantize") for values in data.get("quantize", [])),
        compare=_run(comparison_run_from, data["compare"], "compare") if "compare" in data else None,
        export_format=export_format,
    )


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise CalibscopeError(f"The config file '{path}' does not exist.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8")) if path.suffix == ".toml" else json.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"'{path.name}' is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {error}") from None
    return parse_config(data, base=path.parent)


def run(config: RunConfig, progress: Progress = no_progress, log: Callable[[str], None] = lambda line: None) -> dict[str, Path]:
    """Load, build, collect and write everything into ``config.output`` (refused if it exists).

    ``log`` receives each pass's memory plan before it starts. Under ``torchrun`` every rank runs
    its shard of each pass and rank 0 writes; the other ranks return an empty dict."""
    if config.output.exists():
        raise CalibscopeError(f"'{config.output}' already exists; choose another output folder (nothing was overwritten).")
    writer = distributed.is_writer()
    loaded = load_model(config.model, labelled(scaled(progress, 0.0, 0.1), "Model"))
    corpus = load_corpus(config.corpus, labelled(scaled(progress, 0.1, 0.15), "Corpus"))
    if isinstance(config.sampling, SuppliedSpec):  # windows made elsewhere, used as given
        calibration = supplied_set(config.sampling.path, loaded.tokenizer, max_positions=loaded.info.max_positions,
                                   limit=config.sampling.nsamples)
    else:
        calibration = build(corpus, loaded.tokenizer, config.sampling, max_positions=loaded.info.max_positions,
                            corpus_label=config.corpus.label, progress=labelled(scaled(progress, 0.15, 0.2), "Calibration set"))
    written = {}
    if writer:
        written["calibration"] = save_calibration_set(calibration, loaded.tokenizer, config.output / "calibration",
                                                      config.export_format)
    stats = hessians = None
    if config.stats is not None:
        log(f"Statistics: {stats_plan(loaded, calibration, config.stats).summary()}")
        stats = collect(loaded, calibration, config.stats, labelled(scaled(progress, 0.2, 0.6), "Statistics"))
        if writer:
            written["statistics"] = stats.save(config.output / "statistics")
    if config.hessians is not None:
        log(f"Hessians: {hessian_plan(loaded, calibration, config.hessians).summary()}")
        hessians = collect_hessians(loaded, calibration, config.hessians, labelled(scaled(progress, 0.6, 0.95), "Hessians"))
        if writer:
            written["hessians"] = hessians.save(config.output / "hessians")
    if config.imatrix is not None:  # llama-quantize --imatrix reads either file
        imatrix = collect_imatrix(loaded, calibration, config.imatrix, labelled(scaled(progress, 0.95, 0.96), "Imatrix"))
        if writer:
            for suffix in ("gguf", "dat"):
                written[f"imatrix.{suffix}"] = write_imatrix(imatrix, config.output / f"imatrix.{suffix}")
    cache = EvaluationCache()
    reports = []
    for number, quant_run in enumerate(config.quantize, 1):
        step = labelled(scaled(progress, 0.95, 0.97), f"Quantize {quant_run.spec.label()}")
        report, checkpoint = _quantize(quant_run, loaded, stats, hessians, calibration, cache, step,
                                       config.output if writer else None, log)
        reports.extend([report] if report is not None else [])
        if checkpoint is not None:
            written[f"checkpoint-{number}"] = checkpoint
    comparison = (config.compare.run(loaded, corpus, config.corpus.label, cache, labelled(scaled(progress, 0.97, 0.99), "Compare"))
                  if config.compare is not None else None)
    if not writer:
        return written
    written.update(_results(config.output, reports, comparison))
    written["report"] = config.output / "report.html"
    write_file(written["report"], run_report(loaded.info, config.corpus.label, corpus, calibration, stats, hessians,
                                             reports, comparison))
    written["config"] = config.output / "config.json"
    write_file(written["config"], json.dumps(config_as_json(config), indent=2))
    progress(1.0, f"Wrote {len(written)} artifacts to {config.output}")
    return written


def _quantize(run: QuantRun, loaded, stats, hessians, calibration, cache: EvaluationCache, progress: Progress,
              output: Path | None, log: Callable[[str], None]) -> tuple[object | None, Path | None]:
    """One [[quantize]] run: evaluated (when the whole model is in memory) and, with ``save``, written
    as a checkpoint into ``output`` (None: another rank writes). A model read block by block from
    disk is quantized and written one block at a time, without the perplexity that needs it whole."""
    if not loaded.resident:
        if not (run.save and run.sequential):
            raise SpecError(f"{run.spec.label()}: this model is offloaded, so its perplexity cannot be measured; to write "
                            "it as a checkpoint block by block, use sequential = true and save = FOLDER.")
        if distributed.world()[1] > 1:
            raise SpecError("Writing a checkpoint block by block runs in one process; run this config without torchrun.")
        log(f"{run.spec.label()}: the model is offloaded, so the run is written block by block without a perplexity.")
        summary = run.write(loaded, output / run.save, stats=stats, hessians=hessians, calibration=calibration,
                            progress=progress)
        log(summary.describe())
        return None, summary.folder
    plans = []
    report = run.run(loaded, stats, hessians, cache, progress, calibration, plans.append if run.save else None)
    if not run.save or output is None:
        return report, None
    summary = run.write(loaded, output / run.save, plans[0] if plans else None, stats, hessians, calibration,
                        provenance={"simulated_perplexity": report.quantized_perplexity,
                                    "evaluation": report.meta["evaluation"]})
    log(summary.describe())
    return report, summary.folder


def _results(output: Path, reports: list, comparison) -> dict[str, Path]:
    """Quantization runs (one row each, and each run's per-layer table) and the comparison's rows, as CSV."""
    written = {}
    if reports:
        written["quantization"] = output / "quantization-runs.csv"
        summary = pd.DataFrame([{"scheme": r.spec.label(), "gptq": r.meta.get("gptq", ""), "evaluation": r.meta["evaluation"],
                                 "tokens": r.meta["evaluation_tokens"],
                                 "float": r.float_perplexity, "quantized": r.quantized_perplexity, "gap": r.gap} for r in reports])
        write_file(written["quantization"], summary.to_csv(index=False))
        for number, report in enumerate(reports, 1):
            write_file(output / f"quantization-{number}-layers.csv", report.layers.to_csv(index=False))
    if comparison is not None:
        written["comparison"] = output / "comparison-runs.csv"
        write_file(written["comparison"], comparison.to_csv(index=False))
    return written


def config_as_json(config: RunConfig) -> dict:
    """The config as it was run (every default filled in), to reproduce it."""
    data = {"output": str(config.output), "model": dataclasses.asdict(config.model),
            "corpus": {**dataclasses.asdict(config.corpus), "kind": config.corpus.kind.value},
            "sampling": {"strategy": config.sampling.strategy.value, **dataclasses.asdict(config.sampling)},
            "export": {"format": config.export_format.value}}
    for name in ("stats", "hessians", "imatrix"):
        if getattr(config, name) is not None:
            data[name] = dataclasses.asdict(getattr(config, name))
    if config.quantize:
        data["quantize"] = [as_json(run) for run in config.quantize]
    if config.compare is not None:
        data["compare"] = as_json(config.compare)
    return json.loads(json.dumps(data))
