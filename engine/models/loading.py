"""load_model: one entry point for builtin, tiny, hub and local models on any device."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from engine.errors import ModelLoadError
from engine.models.builtin import BUILTIN_MODELS, cached_checkpoint
from engine.models.layers import find_linear_layers
from engine.models.tiny import TINY_MODELS, build_tiny
from engine.progress import Progress, no_progress
from engine.specs import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the dashboard and reports show about a loaded model."""

    name: str
    source: str
    architecture: str
    parameters: int
    layers: int
    linear_layers: int
    hidden_size: int
    vocab_size: int
    max_positions: int | None
    device: str
    dtype: str
    load_seconds: float
    from_cache: bool

    def as_rows(self) -> list[tuple[str, str]]:
        """(property, value) rows with numbers formatted for people."""
        return [
            ("Model", self.name),
            ("Source", self.source),
            ("Architecture", self.architecture),
            ("Parameters", f"{self.parameters / 1e6:,.1f} M" if self.parameters >= 1e6 else f"{self.parameters:,}"),
            ("Transformer blocks", str(self.layers)),
            ("Quantizable layers", str(self.linear_layers)),
            ("Hidden size", f"{self.hidden_size:,}"),
            ("Vocabulary", f"{self.vocab_size:,}"),
            ("Max positions", f"{self.max_positions:,}" if self.max_positions else "unknown"),
            ("Device", self.device),
            ("Dtype", self.dtype),
            ("Load time", f"{self.load_seconds:.1f} s" + (" (weight cache)" if self.from_cache else "")),
        ]


@dataclass
class LoadedModel:
    """A model ready for calibration passes (eval mode, no gradients) with its tokenizer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    info: ModelInfo
    spec: ModelSpec = field(repr=False)
    # Held by every pass that hooks or swaps weights: sessions sharing a cached model take turns,
    # so no pass ever observes another session's forward or quantized weights.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)


def choose_device(requested: str) -> torch.device:
    """auto: cuda, then mps, then cpu. An explicit device that is absent is an error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device={requested!r} was asked for, but no CUDA device is visible; use 'auto' or 'cpu'.")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("device='mps' was asked for, but MPS is not available here; use 'auto' or 'cpu'.")
    return torch.device(requested)


def choose_dtype(requested: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on CUDA (fast and range-safe), float32 elsewhere (CPU bf16 is slow)."""
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, requested)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(name))


def explain_load_failure(name: str, error: Exception) -> ModelLoadError:
    text = str(error)
    if "trust_remote_code" in text or "remote code" in text.lower():
        return ModelLoadError(
            f"'{name}' needs to run its own Python code (trust_remote_code), which calibscope never "
            "does. Pick a model whose architecture transformers supports natively."
        )
    if _looks_like_path(name):
        return ModelLoadError(
            f"Could not load a model from the directory '{name}': {text.splitlines()[0] if text else error!r}. "
            "It needs config.json, weights (safetensors or bin) and tokenizer files."
        )
    return ModelLoadError(
        f"Could not load '{name}' from the Hugging Face hub ({type(error).__name__}). Check the id, or, "
        "if this machine is offline, use builtin:gemma-3-270m or a local model directory."
    )


def _load_pretrained(name_or_path: str, spec: ModelSpec, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if _looks_like_path(name_or_path) and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise ModelLoadError(f"The model directory '{name_or_path}' does not exist.")
    kwargs: dict = {"trust_remote_code": False, "revision": spec.revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(name_or_path), **kwargs)
        if spec.device_map:
            kwargs["device_map"] = spec.device_map
        model = AutoModelForCausalLM.from_pretrained(os.path.expanduser(name_or_path), dtype=dtype, **kwargs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise explain_load_failure(name_or_path, error) from error
    if not spec.device_map:
        model.to(device)
    return model, tokenizer


def _from_tiny(spec: ModelSpec, device: torch.device, dtype: torch.dtype, progress: Progress):
    model, tokenizer = build_tiny(spec.name)
    return model.to(device=device, dtype=dtype), tokenizer, "random weights from a config", False


def _from_builtin(spec: ModelSpec, device: torch.device, dtype: torch.dtype, progress: Progress):
    checkpoint, from_cache, description = cached_checkpoint(spec.name, progress)
    progress(0.9, "Loading cached weights")
    model, tokenizer = _load_pretrained(str(checkpoint), spec, device, dtype)
    return model, tokenizer, description, from_cache


def _from_pretrained(spec: ModelSpec, device: torch.device, dtype: torch.dtype, progress: Progress):
    progress(0.1, f"Loading {spec.name}")
    model, tokenizer = _load_pretrained(spec.name, spec, device, dtype)
    source = "local directory" if _looks_like_path(spec.name) else "Hugging Face hub"
    return model, tokenizer, source, False


Loader = Callable[[ModelSpec, torch.device, torch.dtype, Progress], tuple]


def _loader_for(name: str) -> Loader:
    if name in TINY_MODELS:
        return _from_tiny
    if name in BUILTIN_MODELS:
        return _from_builtin
    if name.startswith("builtin:"):
        known = ", ".join(BUILTIN_MODELS)
        raise ModelLoadError(f"Unknown builtin model '{name}'. Builtin models: {known}.")
    return _from_pretrained


def _ensure_padding(tokenizer: PreTrainedTokenizerBase) -> None:
    # Batches need a real pad id; fall back to EOS as most causal-LM recipes do.
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token


def _describe(spec, model, source, device, dtype, seconds, from_cache, linear_count) -> ModelInfo:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return ModelInfo(
        name=spec.name,
        source=source,
        architecture=type(model).__name__,
        parameters=sum(p.numel() for p in model.parameters()),
        layers=getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0),
        linear_layers=linear_count,
        hidden_size=getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0),
        vocab_size=getattr(config, "vocab_size", 0),
        max_positions=getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None),
        device=str(device) if not spec.device_map else "device_map=auto",
        dtype=str(dtype).removeprefix("torch."),
        load_seconds=seconds,
        from_cache=from_cache,
    )


def load_model(spec: ModelSpec, progress: Progress = no_progress) -> LoadedModel:
    """Load a causal LM and its tokenizer as ``spec`` says, ready for calibration passes.

    Builtin GGUF models are converted once and cached (see ``engine.models.builtin``); tiny models
    are built from a config; anything else goes through transformers' Auto classes with remote code
    disabled. Raises ModelLoadError with an actionable message on failure.
    """
    started = time.perf_counter()
    loader = _loader_for(spec.name)
    device = choose_device(spec.device)
    dtype = choose_dtype(spec.dtype, device)
    model, tokenizer, source, from_cache = loader(spec, device, dtype, progress)
    model.eval()
    model.requires_grad_(False)
    _ensure_padding(tokenizer)
    progress(0.97, "Finding quantizable layers")
    linear_count = len(find_linear_layers(model, execution_order=False))
    seconds = time.perf_counter() - started
    info = _describe(spec, model, source, device, dtype, seconds, from_cache, linear_count)
    log.info("loaded %s in %.1f s (cache: %s)", spec.name, seconds, from_cache)
    progress(1.0, f"Loaded {spec.name} in {seconds:.1f} s")
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, info=info, spec=spec)
