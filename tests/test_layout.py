"""The layout rules the code promises, read from the source: who may import whom (the import-linter
contracts in pyproject.toml), the engine used through its package fronts and never through private
names, closed vocabularies compared as enums, handlers with few positional parameters; and ruff's
rules (pyproject.toml) hold."""
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
PROJECT = ("engine", "ui", "bench")


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def test_import_contracts_hold():
    """The layers of the README's map and the imports it forbids, stated as import-linter contracts
    ([tool.importlinter] in pyproject.toml): the benchmarks over the dashboard over the engine, the
    engine's packages in the order data flows, no gradio in the engine, tabs that do not import each
    other."""
    run = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                          "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout, run.stdout


def is_package(name: str) -> bool:
    return (ROOT / Path(*name.split(".")) / "__init__.py").is_file()


def is_module(name: str) -> bool:
    return is_package(name) or (ROOT / Path(*name.split("."))).with_suffix(".py").is_file()


def front_offenders(path: Path) -> list[str]:
    """Imports of ``path`` that reach past a package front of the engine: ``engine.<package>.<module>``,
    or a name ``engine.<package>`` does not export (its ``__all__``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [(node.module, tuple(alias.name for alias in node.names))]
        else:
            continue
        for module, names in modules:
            parts = module.split(".")
            if parts[0] != "engine" or len(parts) == 1:
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if len(parts) > 2:
                found.append(f"{where} imports {module}")
            elif is_package(module):
                exported = importlib.import_module(module).__all__
                found += [f"{where} imports {name} from {module}, which does not export it" for name in names
                          if name not in exported]
    return found


def test_the_dashboard_and_the_benchmarks_use_the_engine_through_its_package_fronts():
    """``from engine.stats import collect_hessians``, never ``from engine.stats.hessian_report import ...``:
    each engine package's ``__init__`` is what the rest may use (top-level modules such as
    ``engine.errors`` are their own front)."""
    files = [*sources("ui"), *sources("bench"), ROOT / "app.py"]
    assert [hit for path in files for hit in front_offenders(path)] == []


def test_package_fronts_only_re_export():
    """An ``__init__.py`` holds a docstring, imports and ``__all__``: the logic lives in named modules."""
    found = []
    for path in [*sources("engine"), *sources("ui")]:
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            exports = isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["__all__"]
            if not (docstring or exports or isinstance(node, (ast.Import, ast.ImportFrom))):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {type(node).__name__}")
    assert found == []


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_offenders(path: Path) -> list[str]:
    """Private names ``path`` takes from another module of the project: imported (``from m import _x``),
    read off an imported module (``m._x``), or a private module imported from outside its package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in PROJECT:
            where, parts = f"{path.relative_to(ROOT)}:{node.lineno}", node.module.split(".")
            if any(private(part) and ".".join(parts[:number]) != package for number, part in enumerate(parts)):
                found.append(f"{where} imports the private module {node.module}")
            found += [f"{where} imports {alias.name} from {node.module}" for alias in node.names if private(alias.name)]
            modules.update(alias.asname or alias.name for alias in node.names if is_module(f"{node.module}.{alias.name}"))
        elif isinstance(node, ast.Import):
            modules.update(alias.asname or alias.name.split(".")[0] for alias in node.names
                           if alias.name.split(".")[0] in PROJECT)
    found += [f"{path.relative_to(ROOT)}:{node.lineno} reads {node.value.id}.{node.attr}" for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
              and private(node.attr)]
    return found


def test_private_names_stay_in_their_module():
    files = [*sources("engine"), *sources("ui"), *sources("bench"), ROOT / "app.py"]
    assert [hit for path in files for hit in private_offenders(path)] == []


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
