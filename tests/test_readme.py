"""Every config and Python snippet the README and its pages under docs/ show runs as written, so the
documentation cannot drift from the code. The builtin Gemma is swapped for a small random Llama saved to a local folder, whose
layer widths take the README's groups of 128 so its checkpoints can be written (same code paths,
seconds not minutes; tests/test_cli_run.py runs the example config on Gemma itself); snippets that
run in the peers' own environments are marked in the README and only parsed here."""
import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from engine.pipeline import parse_config, run
from tests.conftest import REPO, WIKITEXT, missing
from tests.test_checkpoint import wide_llama

# the README, then its pages in the order the README links them (the snippets are numbered in this order)
PAGES = ("features", "measured", "scale", "checkpoints", "schemes", "imatrix", "headless", "shared-space", "python-api")
README = "\n".join([(REPO / "README.md").read_text(), *((REPO / "docs" / f"{page}.md").read_text() for page in PAGES)])
BUILTIN = "builtin:gemma-3-270m"
SKIP = "<!-- readme-test: peers -->"  # a snippet for another tool's environment (bench/peers.py runs it)


def snippets(language: str) -> list[str]:
    """The documentation's fenced blocks of ``language``, in order, without those marked SKIP."""
    found = re.finditer(rf"(?P<before>[^\n]*)\n```{language}\n(?P<body>.*?)\n```", README, re.DOTALL)
    return [match["body"] for match in found if SKIP not in match["before"]]


def local_model(folder: Path) -> str:
    """The stand-in for the builtin Gemma, saved as a local model folder; its path as a model name."""
    loaded = wide_llama()
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return str(folder)


def test_the_readme_shows_configs_and_python():
    assert len(snippets("toml")) == 2 and len(snippets("python")) == 1
    assert SKIP in README  # the peers' commands are marked, not silently dropped


def test_the_readme_run_config_is_the_shipped_example():
    shown = tomllib.loads(snippets("toml")[0])
    shipped = tomllib.loads((REPO / "assets" / "example-run.toml").read_text())
    assert shown == shipped


@pytest.mark.slow
def test_the_readme_quantize_and_compare_config_runs(tmp_path):
    """The README's second config as written (on the tiny model): every section, the quantization
    runs and the comparison."""
    text = snippets("toml")[1].replace(BUILTIN, local_model(tmp_path / "model")).replace("../runs/", "runs/")
    config = parse_config(tomllib.loads(text), tmp_path)
    assert len(config.quantize) == 2 and config.compare is not None
    assert [run.evaluation.source for run in config.quantize] == ["python-docs", "python-docs"]
    run(config)
    assert (tmp_path / "runs" / "gemma-quantized" / "report.html").is_file()
    saved = tmp_path / "runs" / "gemma-quantized" / "gemma-w4-gptq"
    assert json.loads((saved / "config.json").read_text())["quantization_config"]["quant_method"] == "compressed-tensors"


@pytest.mark.slow
def test_the_readme_python_api_runs(tmp_path, monkeypatch, capsys):
    if not WIKITEXT.is_file():
        missing(f"reference data absent: {WIKITEXT} (see ../shared/data/README.md)")
    shutil.copy(WIKITEXT, tmp_path / "wiki.test.raw")
    monkeypatch.chdir(tmp_path)
    code = snippets("python")[0].replace(BUILTIN, local_model(tmp_path / "model"))
    namespace: dict = {}
    exec(compile(code, "docs/python-api.md", "exec"), namespace)  # noqa: S102 - runs the README's own snippet
    assert Path("calib-gemma").is_dir() and Path("stats-gemma").is_dir() and Path("hessians-gemma").is_dir()
    assert namespace["report"].quantized_perplexity > 1
    assert namespace["written"].quantized_layers == len(namespace["per_layer"]) and Path("gemma-w4-gptq/config.json").is_file()
    assert (namespace["kv_report"].layers["kind"] == "kv cache").sum() == 2 * len(namespace["kv"].layers)


def test_every_page_is_linked_and_every_relative_link_resolves():
    pages = {REPO / "README.md", *(REPO / "docs").glob("*.md")}
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).resolve().exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", (REPO / "README.md").read_text()))
    assert linked >= {f"{page}.md" for page in PAGES}
