"""Headless runs: a TOML or JSON config -> the same specs as the dashboard -> every artifact + an HTML report."""
from __future__ import annotations

import dataclasses
import functools
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pydantic import BaseModel, ConfigDict, StrictBool, create_model

from engine.atomic import write_file
from engine.config_schema import schema_of, spec_from, validate, within
from engine.corpus import load_corpus
from engine.errors import CalibscopeError, SpecError
from engine.experiments import (
    ComparisonRun,
    ComparisonSpec,
    EvaluationCache,
    EvaluationSpec,
    QuantRun,
    comparison_run_from,
    quant_run_from,
    run_as_json,
)
from engine.export import CheckpointDtype, CheckpointFormat, ExportFormat, save_calibration_set
from engine.imatrix import ImatrixSpec, collect_imatrix, write_imatrix
from engine.models import load_model
from engine.progress import Progress, labelled, no_progress, scaled
from engine.quant import (
    ActivationSpec,
    AwqSpec,
    Calibrated,
    ExpertPolicy,
    KVCacheSpec,
    MixedSpec,
    RotationSpec,
    Sensitivity,
    WeightSpec,
)
from engine.run_report import run_report
from engine.runner import distributed
from engine.sampling import LEGACY_LENGTH_NAMES, SamplingSpec, Strategy, SuppliedSpec, build, entry, supplied_set
from engine.specs import CorpusSpec, ModelSpec, choice
from engine.stats import HessianSpec, StatsSpec, collect, collect_hessians, hessian_memory_plan, stats_memory_plan


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


# How to write a section that was given as a plain value (the natural guess `model = "..."`).
SECTION_HINTS = {name: f"write it as a section: [{name}] on its own line, then its keys (e.g. {example})" for name, example in
                 (("model", 'name = "builtin:gemma-3-270m"'), ("corpus", 'kind = "builtin", name = "mixed"'),
                  ("sampling", 'strategy = "random", nsamples = 32'), ("stats", "batch_size = 8"),
                  ("hessians", 'name_pattern = ""'), ("imatrix", "include_output = false"), ("export", 'format = "parquet"'),
                  ("compare", "seeds = 3"))}
SECTION_HINTS["quantize"] = 'write each run as [[quantize]] on its own line, then its keys (e.g. scheme = "W4 g128 GPTQ")'


@functools.cache
def _schemas() -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    """(the whole config, one [[quantize]] run, the [compare] section): made once, from the specs."""
    evaluation = schema_of(EvaluationSpec) | None
    quantize = create_model(
        "QuantizeKeys", __config__=ConfigDict(extra="forbid"), scheme=(str | None, None),
        weights=(schema_of(WeightSpec) | None, None), activations=(schema_of(ActivationSpec) | None, None),
        name_pattern=(str | None, None), smoothing=(float | None, None), awq=(schema_of(AwqSpec) | None, None),
        experts=(schema_of(ExpertPolicy) | None, None), mixed=(schema_of(MixedSpec) | None, None),
        kv_cache=(schema_of(KVCacheSpec) | None, None), rotation=(schema_of(RotationSpec) | None, None),
        evaluation=(evaluation, None), sensitivity=(Sensitivity | None, None),
        sequential=(StrictBool | None, None), save=(str | None, None), save_format=(CheckpointFormat | None, None),
        save_dtype=(CheckpointDtype | None, None))
    compare = create_model("CompareKeys", __base__=schema_of(ComparisonSpec), evaluation=(evaluation, None))
    export = create_model("ExportKeys", __config__=ConfigDict(extra="forbid"), format=(ExportFormat | None, None))
    whole = create_model(
        "RunConfigKeys", __config__=ConfigDict(extra="forbid"), output=(str, ...),
        model=(schema_of(ModelSpec) | None, None), corpus=(schema_of(CorpusSpec) | None, None),
        sampling=(dict | None, None), stats=(schema_of(StatsSpec) | None, None), hessians=(schema_of(HessianSpec) | None, None),
        imatrix=(schema_of(ImatrixSpec) | None, None), export=(export | None, None), quantize=(list[quantize] | None, None),
        compare=(compare | None, None))
    return whole, quantize, compare


def _sampling(values: dict | None, base: Path) -> SamplingSpec:
    """The [sampling] section: its strategy first, then the keys that strategy takes (older names of
    the length accepted), a supplied windows file relative to the config."""
    values = dict(values or {})
    strategy = choice(Strategy, values.pop("strategy", Strategy.LENGTH_STRATIFIED.value), "[sampling] strategy")
    kind = entry(strategy).spec_type
    for legacy in LEGACY_LENGTH_NAMES:
        if legacy in values and "length" in kind.field_names():
            values.setdefault("length", values.pop(legacy))
    section = create_model("SamplingSection", sampling=(schema_of(kind), ...))
    checked = validate(section, {"sampling": values}, SECTION_HINTS).sampling
    if strategy is Strategy.SUPPLIED and checked.path:  # token windows, relative to the config
        checked.path = str((base / checked.path).expanduser().resolve())
    return within("[sampling]", lambda: spec_from(kind, checked))


def parse_config(data: dict, base: Path = Path(".")) -> RunConfig:
    """Specs from a config dictionary (the TOML/JSON content); SpecError on anything wrong, every
    problem of its shape listed at its place, unknown names with the nearest valid one."""
    if not isinstance(data, dict):
        raise SpecError(f"A config is a table of sections, not {type(data).__name__}.")
    whole, _, _ = _schemas()
    config = validate(whole, data, SECTION_HINTS)

    def section(name: str, kind: type):
        values = getattr(config, name)
        return None if values is None else within(f"[{name}]", lambda: spec_from(kind, values))

    export = config.export.format if config.export is not None and config.export.format is not None else ExportFormat.DISK
    runs = tuple(within(f"quantize[{number}]", lambda run=run: quant_run_from(run.model_dump(exclude_unset=True)))
                 for number, run in enumerate(config.quantize or ()))
    comparison = None if config.compare is None else within(
        "[compare]", lambda: comparison_run_from(config.compare.model_dump(exclude_unset=True)))
    return RunConfig(
        output=(base / config.output).resolve(),
        model=section("model", ModelSpec) or ModelSpec(),
        corpus=section("corpus", CorpusSpec) or CorpusSpec(),
        sampling=_sampling(config.sampling, base),
        stats=section("stats", StatsSpec),
        hessians=section("hessians", HessianSpec),
        imatrix=section("imatrix", ImatrixSpec),
        quantize=runs,
        compare=comparison,
        export_format=export,
    )


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise CalibscopeError(f"The config file '{path}' does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
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
        log(f"Statistics: {stats_memory_plan(loaded, calibration, config.stats).summary()}")
        stats = collect(loaded, calibration, config.stats, labelled(scaled(progress, 0.2, 0.6), "Statistics"))
        if writer:
            written["statistics"] = stats.save(config.output / "statistics")
    if config.hessians is not None:
        log(f"Hessians: {hessian_memory_plan(loaded, calibration, config.hessians).summary()}")
        hessians = collect_hessians(loaded, calibration, config.hessians, labelled(scaled(progress, 0.6, 0.95), "Hessians"))
        if writer:
            written["hessians"] = hessians.save(config.output / "hessians")
    if config.imatrix is not None:  # llama-quantize --imatrix reads either file
        imatrix = collect_imatrix(loaded, calibration, config.imatrix, labelled(scaled(progress, 0.95, 0.96), "Imatrix"))
        if writer:
            for suffix in ("gguf", "dat"):
                written[f"imatrix.{suffix}"] = write_imatrix(imatrix, config.output / f"imatrix.{suffix}")
    cache, calibrated = EvaluationCache(), Calibrated(calibration, stats, hessians)
    reports = []
    for number, quant_run in enumerate(config.quantize, 1):
        step = labelled(scaled(progress, 0.95, 0.97), f"Quantize {quant_run.spec.label()}")
        report, checkpoint = _quantize(quant_run, loaded, calibrated, cache, step, config.output if writer else None, log)
        reports.extend([report] if report is not None else [])
        if checkpoint is not None:
            written[f"checkpoint-{number}"] = checkpoint
    comparison = (config.compare.run(loaded, corpus, config.corpus.label, cache,
                                     labelled(scaled(progress, 0.97, 0.99), "Compare"))
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


def _quantize(run: QuantRun, loaded, calibrated: Calibrated, cache: EvaluationCache, progress: Progress,
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
        summary = run.write(loaded, output / run.save, calibrated, progress=progress)
        log(summary.describe())
        return None, summary.folder
    plans = []
    report, _ = run.run(loaded, calibrated, cache, progress, plans.append if run.save else None)
    if not run.save or output is None:
        return report, None
    summary = run.write(loaded, output / run.save, calibrated, plans[0] if plans else None,
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
                                 "float": r.float_perplexity, "quantized": r.quantized_perplexity, "gap": r.gap,
                                 **r.divergence_columns()}
                                for r in reports])
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
        data["quantize"] = [run_as_json(run) for run in config.quantize]
    if config.compare is not None:
        data["compare"] = run_as_json(config.compare)
    return json.loads(json.dumps(data))
