"""load_model: one entry point for builtin, tiny, hub and local models on any device."""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from engine import guard
from engine.errors import ModelLoadError
from engine.models import moefied
from engine.models.builtin import BUILTIN_MODELS, cached_checkpoint
from engine.models.layers import find_linear_layers, model_lock
from engine.models.offload import CheckpointWeights, ResidentWeights, decide_offload, skeleton
from engine.models.size import estimate_parameters, is_packaged
from engine.models.sources import explain_load_failure, hub_reachable, looks_like_path
from engine.models.tiny import TINY_MODELS, build_tiny
from engine.progress import Progress, no_progress
from engine.specs import AUTO, DType, ModelSpec, Offload

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
    offload: str = "none"

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
            ("Weights", OFFLOAD_SHOWN[self.offload]),
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
    # so no pass ever observes another session's forward or quantized weights. The model's own lock
    # (engine.models.layers.model_lock), so the layer-order probe takes its turn too.
    lock: threading.RLock | None = field(default=None, repr=False, compare=False)
    # Where the weights are: None means all of them on ``device`` (see engine.runner.weights).
    weights: ResidentWeights | CheckpointWeights | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.lock is None:
            self.lock = model_lock(self.model)

    @property
    def weight_source(self) -> ResidentWeights | CheckpointWeights:
        return self.weights if self.weights is not None else ResidentWeights(self.device)

    @property
    def resident(self) -> bool:
        """Every weight is on the execution device: whole-model forwards (perplexity, generation) work."""
        source = self.weight_source
        return source.resident and source.home == self.device

    def require_resident(self, task: str) -> None:
        if not self.resident:
            raise ModelLoadError(f"{task} runs the whole model at once, and this model is offloaded (its weights are "
                                 "read block by block). Load it without offloading for this step.")


OFFLOAD_SHOWN = {Offload.NONE.value: "all on the device", Offload.CPU.value: "in CPU memory, one block on the device at a time",
                 Offload.DISK.value: "read from the checkpoint block by block"}


def choose_device(requested: str) -> torch.device:
    """auto: cuda, then mps, then cpu. An explicit device that is absent is an error."""
    if requested == AUTO:
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


def cpu_has_native_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AVX512-BF16 or AMX-BF16: bfloat16 GEMMs several times faster than float32. Without them PyTorch
    emulates bfloat16 on the CPU (measured on an AVX2 EPYC: 0.3 GFLOP/s against 128 in float32)."""
    if not cpuinfo.is_file():
        return False
    flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_dtype(requested: DType, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on CUDA and on CPUs with native bfloat16 arithmetic, float32 elsewhere."""
    if DType(requested) is DType.AUTO:
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bfloat16())
        return torch.bfloat16 if native else torch.float32
    return getattr(torch, DType(requested).value)


def _load_pretrained(name_or_path: str, spec: ModelSpec, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if looks_like_path(name_or_path) and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise ModelLoadError(f"The model directory '{name_or_path}' does not exist.")
    kwargs: dict = {"trust_remote_code": False, "revision": spec.revision}
    if not looks_like_path(name_or_path) and not hub_reachable():
        kwargs["local_files_only"] = True  # offline: the local cache answers at once, no retries with back-off
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


def _from_moefied(spec: ModelSpec, device: torch.device, dtype: torch.dtype, progress: Progress):
    """The builtin Gemma made MoE (engine/models/moefied.py): its fit made once on a float32 dense copy."""
    dense = replace(spec, name=moefied.DENSE)
    model, tokenizer, _, from_cache = _from_builtin(dense, device, dtype, progress)

    def float32_dense():
        if dtype == torch.float32:
            return model, tokenizer
        return _from_builtin(replace(dense, dtype="float32"), device, torch.float32, progress)[:2]

    fit, cached = moefied.cached_fit(float32_dense, progress)
    return moefied.moefied(model, fit), tokenizer, moefied.DESCRIPTION, from_cache and cached


def _from_pretrained(spec: ModelSpec, device: torch.device, dtype: torch.dtype, progress: Progress):
    progress(0.1, f"Loading {spec.name}")
    model, tokenizer = _load_pretrained(spec.name, spec, device, dtype)
    source = "local directory" if looks_like_path(spec.name) else "Hugging Face hub"
    return model, tokenizer, source, False


def checkpoint_folder(spec: ModelSpec, progress: Progress) -> Path:
    """The safetensors checkpoint a disk-offloaded model reads its blocks from."""
    if spec.name in BUILTIN_MODELS:
        return cached_checkpoint(spec.name, progress)[0]
    if spec.name in TINY_MODELS or spec.name == moefied.NAME:
        raise ModelLoadError(f"{spec.name} is built in memory and has no checkpoint to read from disk: use offload 'none' "
                             "(or save it with save_pretrained and load the folder).")
    if looks_like_path(spec.name):
        return Path(spec.name).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(spec.name, revision=spec.revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"]))
    except (OSError, ValueError) as error:
        raise explain_load_failure(spec.name, error) from error


def _from_disk(spec: ModelSpec, dtype: torch.dtype, progress: Progress):
    """A skeleton whose blocks are read from the checkpoint when a pass needs them."""
    from transformers import AutoTokenizer

    folder = checkpoint_folder(spec, progress)
    try:
        model = skeleton(folder, dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise explain_load_failure(str(folder), error) from error
    weights = CheckpointWeights(folder, dtype, key_prefix=f"{model.base_model_prefix}.")
    return model, tokenizer, f"checkpoint in {folder} (read block by block)", True, weights


def _weight_bytes(spec: ModelSpec, dtype: torch.dtype) -> int:
    """What the weights take in ``dtype``; packaged models are small enough never to be offloaded by default."""
    return 0 if is_packaged(spec.name) else estimate_parameters(spec.name, spec.revision) * dtype.itemsize


Loader = Callable[[ModelSpec, torch.device, torch.dtype, Progress], tuple]


def _loader_for(name: str) -> Loader:
    if name in TINY_MODELS:
        return _from_tiny
    if name in BUILTIN_MODELS:
        return _from_builtin
    if name == moefied.NAME:
        return _from_moefied
    if name.startswith("builtin:"):
        known = ", ".join([*BUILTIN_MODELS, moefied.NAME])
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


def from_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "in-memory model") -> LoadedModel:
    """A model you already hold (built, patched, or loaded your own way) ready for calibration passes,
    on the device and in the dtype of its parameters."""
    model.eval()
    model.requires_grad_(False)
    _ensure_padding(tokenizer)
    parameter = next(model.parameters())
    spec = ModelSpec(name=name, device=str(parameter.device), dtype=str(parameter.dtype).removeprefix("torch."),
                     offload=Offload.NONE)
    info = _describe(spec, model, "given in memory", parameter.device, parameter.dtype, 0.0, False,
                     len(find_linear_layers(model, execution_order=False)))
    return LoadedModel(model=model, tokenizer=tokenizer, device=parameter.device, info=info, spec=spec)


def load_model(spec: ModelSpec, progress: Progress = no_progress) -> LoadedModel:
    """Load a causal LM and its tokenizer as ``spec`` says, ready for calibration passes.

    Builtin GGUF models are converted once and cached (see ``engine.models.builtin``); tiny models
    are built from a config; anything else goes through transformers' Auto classes with remote code
    disabled. Raises ModelLoadError with an actionable message on failure.
    """
    started = time.perf_counter()
    guard.current().policy.model_name(spec.name)  # on a shared Space: a hub id or a packaged model, never a path
    loader = _loader_for(spec.name)
    if looks_like_path(spec.name) and not os.path.isdir(os.path.expanduser(spec.name)):
        raise ModelLoadError(f"The model directory '{spec.name}' does not exist.")
    device = choose_device(spec.device)
    dtype = choose_dtype(spec.dtype, device)
    offload = decide_offload(spec.offload, lambda: _weight_bytes(spec, dtype), device)
    if offload is Offload.DISK:
        model, tokenizer, source, from_cache, weights = _from_disk(spec, dtype, progress)
    else:
        home = torch.device("cpu") if offload is Offload.CPU else device
        model, tokenizer, source, from_cache = loader(spec, home, dtype, progress)
        weights = ResidentWeights(home)
    model.eval()
    model.requires_grad_(False)
    _ensure_padding(tokenizer)
    progress(0.97, "Finding quantizable layers")
    # Resident weights: probe the execution order now, once, before any pass hooks the model.
    linear_count = len(find_linear_layers(model, execution_order=offload is Offload.NONE))
    seconds = time.perf_counter() - started
    info = replace(_describe(spec, model, source, device, dtype, seconds, from_cache, linear_count), offload=offload.value)
    log.info("loaded %s in %.1f s (cache: %s, offload: %s)", spec.name, seconds, from_cache, offload.value)
    progress(1.0, f"Loaded {spec.name} in {seconds:.1f} s")
    return LoadedModel(model=model, tokenizer=tokenizer, device=device, info=info, spec=spec, weights=weights)
