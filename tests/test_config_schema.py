"""Run configs are checked against a schema made from the specs: typos are named with the nearest
valid name, wrong types with the type expected and where, and `calibscope run` exits 2 with the
message, never a traceback; every config calibscope itself writes or ships validates."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from engine.errors import SpecError
from engine.pipeline import load_config, parse_config
from ui.cli import main

REPO = Path(__file__).resolve().parents[1]
BASE = {"output": "out", "model": {"name": "tiny-random-llama"}, "corpus": {"kind": "builtin", "name": "python-docs"},
        "sampling": {"strategy": "random", "nsamples": 4, "length": 64}}


def refused(toml: str) -> str:
    with pytest.raises(SpecError) as raised:
        parse_config(tomllib.loads(toml))
    return str(raised.value)


@pytest.mark.parametrize("toml, words", [
    ('output = "o"\n[[quantize]]\nwieghts = { bits = 3 }', "quantize[0] has an unknown key 'wieghts'; did you mean 'weights'?"),
    ('output = "o"\n[[quantize]]\nweights = { bitz = 3 }', "quantize[0].weights has an unknown key 'bitz'; did you mean 'bits'?"),
    ('output = "o"\n[modle]\nname = "x"', "The config has an unknown section 'modle'; did you mean 'model'?"),
    ('output = "o"\n[export]\nfromat = "parquet"', "export has an unknown key 'fromat'; did you mean 'format'?"),
    ('output = "o"\n[sampling]\nstrategy = "random"\nnsample = 4',
     "sampling has an unknown key 'nsample'; did you mean 'nsamples'?"),
    ('output = "o"\n[model]\nname = 5', "model.name: expected a string, got a whole number 5"),
    ('output = "o"\n[[quantize]]\nweights = { bits = "x" }',
     "quantize[0].weights.bits: expected a whole number, got a string 'x'"),
    ('output = "o"\n[quantize]\nscheme = "W4 g128 GPTQ"', "quantize: expected a list, got a table"),
    ('output = "o"\nmodel = "builtin:gemma-3-270m"',
     "model: expected a table, got a string 'builtin:gemma-3-270m'; write it as a section"),
    ('output = "o"\n[stats]\nbatch_size = 2.5', "stats.batch_size: expected a whole number, got a number 2.5"),
    ('output = "o"\n[hessians]\ndtype = "float16"', "hessians.dtype='float16' is not supported; use one of 'float32', 'float64'"),
    ('[model]\nname = "x"', "output is missing"),
])
def test_a_config_that_does_not_fit_is_refused_naming_the_place_and_the_fix(toml, words):
    assert words in refused(toml)


def test_every_problem_is_listed_once():
    message = refused('output = 5\n[modle]\n[[quantize]]\nwieghts = {}\nsequential = "yes"')
    assert message.startswith("The config does not fit its schema (4 problems):")
    for words in ("output: expected a string", "unknown section 'modle'", "unknown key 'wieghts'",
                  "quantize[0].sequential: expected true or false"):
        assert message.count(words) == 1, message


def test_the_specs_own_checks_still_run_and_say_where(tmp_path):
    assert "quantize[0]: sequential is for GPTQ weights only" in refused(
        'output = "o"\n[[quantize]]\nscheme = "W4 g128 RTN"\nsequential = true')
    assert "[model]:" in refused('output = "o"\n[model]\nname = "   "')


@pytest.mark.parametrize("config", [
    {**BASE, "model": {"name": 5}},
    {**BASE, "quantize": {"scheme": "W4 g128 GPTQ"}},
    {**BASE, "model": "builtin:gemma-3-270m"},
    {**BASE, "imatrix": {"include_output": "yes"}},
    [1, 2, 3],
])
def test_calibscope_run_exits_2_with_the_message_never_a_traceback(tmp_path, capsys, config):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exited:
        main(["run", str(path)])
    error = capsys.readouterr().err
    assert exited.value.code == 2 and error.startswith("calibscope: ") and "Traceback" not in error


def test_the_shipped_example_and_the_dashboards_exported_config_validate(tmp_path):
    assert load_config(REPO / "assets" / "example-run.toml").model.name == "builtin:gemma-3-270m"
    from engine.experiments.runs import EvaluationSpec, QuantRun
    from engine.pipeline import RunConfig, config_as_json
    from engine.quant import PRESETS
    from engine.sampling import RandomSpec
    from engine.specs import CorpusSpec, ModelSpec
    from engine.stats import HessianSpec, StatsSpec

    exported = config_as_json(RunConfig(output=Path("o"), model=ModelSpec("tiny-random-llama"), corpus=CorpusSpec.builtin(),
                                        sampling=RandomSpec(nsamples=4, length=64), stats=StatsSpec(), hessians=HessianSpec(),
                                        quantize=(QuantRun(PRESETS["W4 g128 AWQ"], EvaluationSpec()),
                                                  QuantRun(PRESETS["NVFP4 W4A4"]))))
    again = parse_config(json.loads(json.dumps(exported)))
    assert again.quantize[0].spec == PRESETS["W4 g128 AWQ"] and again.quantize[1].spec == PRESETS["NVFP4 W4A4"]
    assert config_as_json(again) == {**exported, "output": str(Path("o").resolve())}
