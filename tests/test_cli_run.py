"""`calibscope run CONFIG`: headless runs end to end, and bad configs as clear one-line errors."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch

from engine.pipeline import load_config
from engine.stats import StatsReport
from engine.stats.hessian_report import HessianReport
from tests.test_runner import free_port
from ui.cli import main

REPO = Path(__file__).resolve().parents[1]


def write_config(tmp_path, **overrides):
    config = {
        "output": "out", "model": {"name": "tiny-random-llama"}, "corpus": {"kind": "builtin", "name": "python-docs"},
        "sampling": {"strategy": "length-stratified", "nsamples": 6, "edges": [64, 128, 256]},
        "stats": {"percentiles": [99.9]}, "hessians": {}, **overrides,
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    return path


def run(path):
    with pytest.raises(SystemExit) as exited:
        main(["run", str(path)])
    return exited.value.code


def test_run_writes_every_artifact_and_a_report(tmp_path, capsys):
    assert run(write_config(tmp_path)) == 0
    out = tmp_path / "out"
    listing = capsys.readouterr().out
    for name in ("calibration", "statistics", "hessians", "report", "config"):
        assert name in listing
    assert len(datasets.load_from_disk(str(out / "calibration" / "dataset"))) == 6
    assert len(StatsReport.load(out / "statistics").summary) == 14
    assert len(HessianReport.load(out / "hessians").diagnostics) == 14
    page = (out / "report.html").read_text()
    assert page.count('class="cs-figure"') == 7 and "const PLOTLY" in page  # plotly.js embedded: offline
    rerun = json.loads((out / "config.json").read_text())
    assert rerun["sampling"]["strategy"] == "length-stratified" and rerun["sampling"]["seed"] == 0


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"sampling": {"strategy": "magic"}}, "strategy='magic' is not supported; use one of"),
        ({"sampling": {"nsamples": 0}}, "nsamples=0"),
        ({"model": {"name": "tiny-random-llama", "colour": "red"}}, "model has an unknown key 'colour'"),
        ({"corpus": {"kind": "file", "name": "/no/such/file.txt"}}, "does not exist"),
        ({"export": {"format": "xlsx"}}, "format='xlsx' is not supported; use one of"),
    ],
)
def test_bad_configs_exit_2_with_a_message(tmp_path, capsys, overrides, words):
    assert run(write_config(tmp_path, **overrides)) == 2
    error = capsys.readouterr().err
    last = error.strip().splitlines()[-1]  # the progress bar also writes to stderr, before the message
    assert last.startswith("calibscope: ") and words in last and "Traceback" not in error


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    assert run(write_config(tmp_path)) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "out" / "mine.txt").read_text() == "keep me"


def test_missing_and_invalid_config_files(tmp_path, capsys):
    assert run(tmp_path / "absent.toml") == 2
    broken = tmp_path / "broken.toml"
    broken.write_text("output = [unclosed")
    assert run(broken) == 2
    assert "not valid TOML" in capsys.readouterr().err


@pytest.mark.slow
def test_example_config_runs_on_the_builtin_model(tmp_path, capsys):
    example = tmp_path / "example-run.toml"
    shutil.copy(REPO / "assets" / "example-run.toml", example)
    config = load_config(example)
    assert config.model.name == "builtin:gemma-3-270m" and config.export_format == "parquet"
    assert run(example) == 0
    out = (tmp_path / "../runs/gemma-mixed").resolve()
    try:
        assert (out / "calibration" / "calibration.parquet").is_file()
        report = (out / "report.html").read_text()
        assert "const PLOTLY" in report and report.count('class="cs-figure"') >= 4  # plotly.js embedded: opens offline
        assert "<h2>Hessians</h2>" in report and "<h2>Activation ranges</h2>" in report
        hessians = HessianReport.load(out / "hessians")
        assert set(hessians.diagnostics["layer"].str.extract(r"layers\.(\d+)\.")[0]) == {"0", "17"}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_torchrun_with_two_ranks_writes_once_what_one_process_writes(tmp_path):
    """`torchrun --nproc-per-node 2 -m ui.cli run CONFIG`: gloo ranks share the batches, rank 0 writes."""
    single = tmp_path / "single"
    single.mkdir()
    assert run(write_config(single, hessians={"batch_size": 2}, stats={"percentiles": [99.9], "batch_size": 2})) == 0
    ranks = tmp_path / "ranks"
    ranks.mkdir()
    config = write_config(ranks, hessians={"batch_size": 2}, stats={"percentiles": [99.9], "batch_size": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(free_port()), "-m", "ui.cli", "run", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("hessians ") == 1  # one listing: rank 0's
    first, second = HessianReport.load(single / "out" / "hessians"), HessianReport.load(ranks / "out" / "hessians")
    for key, hessian in first.hessians.items():
        assert float((hessian - second.hessians[key]).abs().max() / hessian.abs().max()) <= 1e-5, key
    stats_first, stats_second = StatsReport.load(single / "out" / "statistics"), StatsReport.load(ranks / "out" / "statistics")
    for key, arrays in stats_first.channels.items():
        assert torch.equal(arrays["max"], stats_second.channels[key]["max"]), key


def test_a_config_repeats_quantization_runs_and_a_comparison(tmp_path):
    config = write_config(tmp_path, quantize=[
        {"scheme": "W4 g128 GPTQ", "evaluation": {"source": "python-docs (held-out 10%)", "length": 64, "windows": 2}},
        {"weights": {"method": "rtn", "bits": 8, "group_size": 0}, "activations": {"bits": 8, "range_method": "percentile"},
         "sensitivity": "none", "evaluation": {"source": "python-docs (held-out 10%)", "length": 64, "windows": 2}}],
        compare={"strategies": ["random"], "seeds": 1, "counts": [3], "length": 48, "schemes": ["W4 g128 RTN"],
                 "evaluation": {"windows": 2}})
    assert run(config) == 0
    out = tmp_path / "out"
    runs = pd.read_csv(out / "quantization-runs.csv")
    assert list(runs["scheme"]) == ["W4 g128 GPTQ", "W8 per-channel RTN + A8 static per-tensor p99.99"]
    assert (out / "quantization-2-layers.csv").is_file() and len(pd.read_csv(out / "comparison-runs.csv")) == 1
    again = json.loads((out / "config.json").read_text())
    assert again["quantize"][0]["weights"]["method"] == "gptq" and again["compare"]["seeds"] == 1
    assert load_config(out / "config.json").quantize == load_config(config).quantize  # the config it wrote runs the same


def test_a_sequential_quantization_needs_no_collected_hessians(tmp_path):
    evaluation = {"source": "python-docs (held-out 10%)", "length": 64, "windows": 2}
    config = write_config(tmp_path, hessians=None, quantize=[
        {"scheme": "W4 g128 GPTQ (gptqmodel)", "sequential": True, "evaluation": evaluation},
        {"scheme": "W4 g128 GPTQ", "sequential": True, "evaluation": evaluation}])
    data = json.loads(config.read_text())
    del data["hessians"]
    config.write_text(json.dumps(data))
    assert run(config) == 0
    runs = pd.read_csv(tmp_path / "out" / "quantization-runs.csv")
    assert list(runs["gptq"]) == ["true sequential", "sequential"] and runs["quantized"].notna().all()
    assert load_config(tmp_path / "out" / "config.json").quantize == load_config(config).quantize


def test_an_awq_run_searches_on_the_set_and_its_config_repeats_it(tmp_path):
    evaluation = {"source": "python-docs (held-out 10%)", "length": 64, "windows": 2}
    asymmetric = {"method": "rtn", "bits": 4, "group_size": 0, "symmetric": False}
    config = write_config(tmp_path, hessians=None, stats=None, quantize=[
        {"scheme": "W4 g128 AWQ", "evaluation": evaluation},
        {"weights": asymmetric, "awq": {"clip": True, "grid": 10}, "save": "awq", "evaluation": evaluation}])
    data = json.loads(config.read_text())
    del data["hessians"], data["stats"]  # AWQ needs neither: it runs its own pass on the set
    config.write_text(json.dumps(data))
    assert run(config) == 0
    out = tmp_path / "out"
    runs = pd.read_csv(out / "quantization-runs.csv")
    assert list(runs["scheme"]) == ["AWQ + W4 g128 RTN", "AWQ (10 points, clip) + W4 per-channel asym RTN"]
    layers = pd.read_csv(out / "quantization-2-layers.csv")
    assert {"awq_ratio", "clipped_groups", "output_error_before_awq"} <= set(layers.columns)
    assert (out / "awq" / "config.json").is_file()
    again = json.loads((out / "config.json").read_text())
    assert again["quantize"][1]["awq"]["clip"] is True and again["quantize"][1]["awq"]["scaling"] == "inputs and weights"
    assert load_config(out / "config.json").quantize == load_config(config).quantize


def test_a_mixed_precision_run_reports_its_widths_and_its_config_repeats_it(tmp_path):
    evaluation = {"source": "python-docs (held-out 10%)", "length": 64, "windows": 2}
    config = write_config(tmp_path, stats=None, quantize=[
        {"weights": {"method": "gptq", "bits": 4, "group_size": 0}, "mixed": {"budget": 5.5, "bits": [2, 4, 8]},
         "evaluation": evaluation}])
    assert run(config) == 0
    out = tmp_path / "out"
    runs = pd.read_csv(out / "quantization-runs.csv")
    assert "mixed W{2,4,8} at 5.5 bits/weight (output error)" in runs["scheme"][0] and runs["kld_mean"].notna().all()
    layers = pd.read_csv(out / "quantization-1-layers.csv")
    stored = (layers["bits_per_weight"] * layers["weights"]).sum()
    assert set(layers["bits"]) <= {2, 4, 8} and stored <= 5.5 * layers["weights"].sum()
    again = json.loads((out / "config.json").read_text())
    assert again["quantize"][0]["mixed"] == {"budget": 5.5, "bits": [2, 4, 8], "allocation": "output error"}
    assert load_config(out / "config.json").quantize == load_config(config).quantize


def test_bad_quantize_and_compare_sections_are_messages(tmp_path, capsys):
    assert run(write_config(tmp_path, quantize=[{"scheme": "W5 magic"}])) == 2
    assert "scheme 'W5 magic' is unknown" in capsys.readouterr().err
    assert run(write_config(tmp_path, quantize=[{"scheme": "W4 g128 RTN", "sequential": True}])) == 2
    assert "sequential is for GPTQ weights only" in capsys.readouterr().err
    assert run(write_config(tmp_path, quantize=[{"scheme": "W4 g128 GPTQ", "sequential": "yes"}])) == 2
    assert "quantize[0].sequential: expected true or false" in capsys.readouterr().err
    assert run(write_config(tmp_path, quantize=[{"scheme": "W4 g128 RTN", "save": "../elsewhere"}])) == 2
    assert "give a folder name" in capsys.readouterr().err
    dynamic = {"method": "gptq", "act_order": "dynamic"}
    assert run(write_config(tmp_path, quantize=[{"weights": dynamic, "save": "w4"}])) == 2
    assert "no longer stores activation order 'group'" in capsys.readouterr().err
    assert run(write_config(tmp_path, quantize=[{"scheme": "NVFP4A16", "save": "fp4", "save_dtype": "float32"}])) == 2
    assert "NVFP4 weights run in bfloat16 only" in capsys.readouterr().err
    assert run(write_config(tmp_path, quantize=[{"scheme": "W4 g128 RTN", "save": "w4", "save_dtype": "fp64"}])) == 2
    assert "save_dtype" in capsys.readouterr().err
    assert run(write_config(tmp_path, compare={"seeds": 0})) == 2
    assert "at least one seed" in capsys.readouterr().err


def test_a_run_saves_its_quantized_model_and_the_checkpoint_reloads_to_the_same_perplexity(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.experiments.evaluations import EvaluationCache
    from engine.experiments.runs import EvaluationSpec
    from engine.models import from_model
    from engine.quant import perplexity

    evaluation = {"source": "python-docs (held-out 10%)", "length": 64, "windows": 2}
    per_channel = {"method": "gptq", "bits": 4, "group_size": 0}  # the tiny model's 37-wide MLP takes no groups of 128
    config = write_config(tmp_path, quantize=[{"weights": per_channel, "save": "w4", "evaluation": evaluation}])
    assert run(config) == 0
    out = tmp_path / "out"
    simulated = float(pd.read_csv(out / "quantization-runs.csv")["quantized"][0])
    back = AutoModelForCausalLM.from_pretrained(out / "w4", dtype=torch.float32)
    with torch.no_grad():
        back(torch.tensor([[1, 40, 41]]))  # compressed-tensors decompresses on the first forward
    loaded = from_model(back, AutoTokenizer.from_pretrained(out / "w4"))
    reloaded = perplexity(loaded, EvaluationSpec(**evaluation).windows_for(loaded, EvaluationCache()))
    assert reloaded / simulated == pytest.approx(1.0, abs=1e-3)
    provenance = json.loads((out / "w4" / "calibscope.json").read_text())
    assert provenance["simulated_perplexity"] == pytest.approx(simulated) and provenance["run"]["save"] == "w4"
    assert provenance["dtype"] == provenance["run"]["save_dtype"] == "bfloat16"  # the default, said
    assert load_config(out / "config.json").quantize == load_config(config).quantize


def test_an_offloaded_model_is_written_block_by_block_without_a_perplexity(tmp_path, capsys):
    from engine import ModelSpec, load_model

    source = load_model(ModelSpec("tiny-random-llama", dtype="float32"))
    source.model.save_pretrained(tmp_path / "source")
    source.tokenizer.save_pretrained(tmp_path / "source")
    weights = {"method": "gptq", "bits": 4, "group_size": 0}
    model = {"name": str(tmp_path / "source"), "offload": "disk", "dtype": "float32"}

    def offloaded(quantize):
        config = write_config(tmp_path, model=model, quantize=quantize)
        data = json.loads(config.read_text())
        del data["hessians"], data["stats"]
        config.write_text(json.dumps(data))
        return config

    assert run(offloaded([{"weights": weights, "save": "w4"}])) == 2
    assert "use sequential = true and save = FOLDER" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    assert run(offloaded([{"weights": weights, "sequential": True, "save": "w4"}])) == 0
    assert "written block by block without a perplexity" in capsys.readouterr().err
    assert not (tmp_path / "out" / "quantization-runs.csv").exists()
    settings = json.loads((tmp_path / "out" / "w4" / "config.json").read_text())["quantization_config"]
    assert settings["config_groups"]["group_0"]["weights"]["strategy"] == "channel"
