"""The declared dependency floors hold the features calibscope uses: a floor below the version
that brought a feature is a promise the package cannot keep (a user on that version meets an
AttributeError or a missing operator at run time). Each feature is checked on what is installed,
and each floor against the version that introduced it."""
import importlib.metadata
import re
import tomllib

import gguf
import torch

from tests.conftest import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# package -> (the oldest version with every feature used, what needs it)
FEATURE_FLOORS = {
    "torch": ((2, 10), "torch.mm(..., out_dtype=torch.float32) (2.8); compressed-tensors 0.20 requires torch >= 2.10"),
    "compressed-tensors": ((0, 20), "the classmethod compressor interface (BaseCompressor.compress on a state dict)"),
    "gguf": ((0, 18), "gguf.GGUFType.IMATRIX: the GGUF importance-matrix file type"),
}


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def declared_floor(package: str) -> tuple[int, ...]:
    requirement = next(r for r in PROJECT["dependencies"] if re.match(rf"{package}\b", r))
    return version(re.search(r">=\s*([\d.]+)", requirement).group(1))


def test_python_floor_has_tomllib():
    assert version(PROJECT["requires-python"]) >= (3, 11)  # tomllib reads run configs


def test_declared_floors_are_at_least_where_the_features_appeared():
    for package, (introduced, why) in FEATURE_FLOORS.items():
        assert declared_floor(package) >= introduced, f"{package}: {why} needs {introduced}"
        assert version(importlib.metadata.version(package)) >= introduced


def test_the_features_exist_in_what_is_installed():
    assert "dtype" in {overload for overload in torch.ops.aten.mm.overloads()}  # mm.dtype: the out_dtype overload
    assert gguf.GGUFType.IMATRIX
    assert "add_architecture" in vars(gguf.GGUFWriter)  # the public method the imatrix writer overrides
    from compressed_tensors.compressors import BaseCompressor

    assert isinstance(vars(BaseCompressor.get_value_from_registry("pack-quantized"))["compress"], classmethod)


def test_unbounded_dependencies_are_only_those_used_through_stable_apis():
    bounded = {"transformers", "gradio", "gguf", "compressed-tensors"}  # private-ish surfaces or known breakage outside the range
    for requirement in PROJECT["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
        if name in bounded:
            assert "<" in requirement, requirement
