"""The layout rules the code promises, read from the source: who may import whom, closed vocabularies
compared as enums, handlers with few positional parameters; and ruff's rules (pyproject.toml) hold."""
from __future__ import annotations

import ast
import enum
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parents[1]


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def runtime_imports(path: Path) -> set[str]:
    """Modules a file imports when it runs (imports under ``if TYPE_CHECKING:`` are for annotations only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
                 and getattr(branch.test, "id", getattr(branch.test, "attr", "")) == "TYPE_CHECKING"
                 for node in ast.walk(branch)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def imports_under(folder: str) -> dict[str, set[str]]:
    return {str(path.relative_to(ROOT)): runtime_imports(path) for path in sources(folder)}


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{name} imports {module}" for name, modules in imports_under(folder).items() for module in modules
            if module.startswith(forbidden)]


def test_the_engine_never_imports_the_dashboard():
    assert offenders("engine", ("gradio", "ui")) == []


def test_sampling_runs_before_any_pass_and_does_not_import_statistics():
    assert offenders("engine/sampling", ("engine.stats", "engine.runner", "engine.experiments")) == []


def test_figures_import_result_types_only():
    assert offenders("engine/figures", ("engine.experiments", "engine.runner", "ui")) == []


def test_tabs_do_not_import_each_other():
    tabs = imports_under("ui/tabs")
    assert [f"{name} imports {m}" for name, modules in tabs.items() for m in modules if m.startswith("ui.tabs")] == []


def closed_vocabulary() -> set[str]:
    """Every label of every str-Enum the engine defines."""
    labels = set()
    for module in pkgutil.walk_packages(engine.__path__, "engine."):
        for value in vars(importlib.import_module(module.name)).values():
            if isinstance(value, type) and issubclass(value, enum.Enum) and issubclass(value, str):
                labels.update(member.value for member in value)
    return labels


def string_comparisons(path: Path, labels: set[str]) -> list[str]:
    """`x == "gptq"`, `x in ("rtn", "gptq")`: comparisons of a value with labels of a vocabulary."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Compare):
            continue
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            if any(isinstance(side, ast.Attribute) and side.attr == "type" for side in (left, right)):
                left = right  # torch's own vocabulary: device.type == "cpu"
                continue
            if isinstance(op, (ast.In, ast.NotIn)):  # `x in ("a", "b")`; `"key" in mapping` is no comparison
                constants = list(right.elts) if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else []
            else:
                constants = [side for side in (left, right) if isinstance(side, ast.Constant)]
            hits = [c.value for c in constants if isinstance(c, ast.Constant) and c.value in labels]
            if hits:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} compares with {hits}")
            left = right
    return found


def test_closed_vocabularies_are_compared_as_enums_not_strings():
    labels = closed_vocabulary()
    assert {"gptq", "rtn", "minmax", "tensor", "joined", "random", "inputs", "disk", "static"} <= labels
    found = [hit for folder in ("engine", "ui") for path in sources(folder) for hit in string_comparisons(path, labels)]
    assert found == []


@pytest.mark.parametrize("path", sources("ui"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_dashboard_function_takes_more_than_eight_positional_parameters(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    crowded = [f"{node.name} ({len(node.args.posonlyargs) + len(node.args.args)})" for node in ast.walk(tree)
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
               and len(node.args.posonlyargs) + len(node.args.args) > 8]
    assert crowded == []


def test_ruff_is_clean():
    """ruff's default rules and E501 at the configured 130 characters (pinned in the test extras)."""
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
