"""The quantized model as a checkpoint other tools load: compressed-tensors (vLLM, transformers,
llm-compressor's format) or GPTQ (GPTQModel's v1 format: AutoGPTQ, optimum, vLLM's GPTQ kernels).

``CheckpointWriter`` takes quantized layers as they are made (a whole plan at once, or block by
block from ``gptq_block_by_block``, so a model larger than memory is written without ever being
whole), then the tensors left float (embeddings, norms, biases, the LM head) one at a time, the
config with its quantization_config, the tokenizer (with its chat template) and the generation
config. Float parts and scales are written in the dtype the checkpoint is served in (``CheckpointDtype``:
bfloat16 unless asked otherwise), not the dtype calibscope computed in: a float32 model (the default
on a CPU without native bf16) would otherwise ship float32 embeddings twice the size, and FP4 weights
that transformers cannot run beside them. Everything is written into a hidden sibling folder that is
renamed to the target only when complete: an existing folder is never touched, and a failure (a
full disk) leaves nothing behind.
"""
from __future__ import annotations

import copy
import errno
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Self

import torch
from compressed_tensors.compressors import ModelCompressor

from engine.atomic import staged_directory
from engine.errors import ExportError, SpecError
from engine.export import compressed, gptq_format, transforms
from engine.export.experts import expert_linears
from engine.export.shards import DEFAULT_SHARD_BYTES, ShardWriter
from engine.models import CheckpointWeights, ExpertsLayer, LoadedModel, find_experts, tied_head
from engine.quant import IntWeight, QuantizedModel, QuantSpec
from engine.specs import choice

PROVENANCE = "calibscope.json"


class CheckpointFormat(str, Enum):
    COMPRESSED_TENSORS = "compressed-tensors"
    GPTQ = "gptq"


SERVES = {
    CheckpointFormat.COMPRESSED_TENSORS: "vLLM (vllm serve FOLDER), transformers with compressed-tensors, llm-compressor",
    CheckpointFormat.GPTQ: "vLLM (gptq / gptq_marlin), GPTQModel, transformers with optimum and GPTQModel",
}


class CheckpointDtype(str, Enum):
    """The dtype of a checkpoint's float parts (embeddings, norms, biases, the LM head, the scales
    stored in the model's dtype) and of its config: what the model is served in. ``model``: the
    loaded model's own dtype (float32 on a CPU without native bf16)."""

    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"
    MODEL = "model"


def checkpoint_format(value: CheckpointFormat | str) -> CheckpointFormat:
    try:
        return choice(CheckpointFormat, value, "checkpoint format")
    except SpecError as error:
        raise ExportError(str(error)) from None


def checkpoint_dtype(value: CheckpointDtype | str) -> CheckpointDtype:
    try:
        return choice(CheckpointDtype, value, "checkpoint dtype")
    except SpecError as error:
        raise ExportError(str(error)) from None


def _known_dtype(dtype: CheckpointDtype | str | torch.dtype | None) -> torch.dtype | None:
    """The torch dtype asked for (None: ``model``, known once the model is)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    dtype = checkpoint_dtype(dtype)
    return None if dtype is CheckpointDtype.MODEL else getattr(torch, dtype.value)


def stored_dtype(loaded: LoadedModel, dtype: CheckpointDtype | str = CheckpointDtype.BFLOAT16) -> torch.dtype:
    """The torch dtype a checkpoint of ``loaded`` is written in when ``dtype`` is asked for."""
    return _known_dtype(checkpoint_dtype(dtype)) or _model_dtype(loaded)


def refusal(spec: QuantSpec, fmt: CheckpointFormat | str, dtype: CheckpointDtype | str | torch.dtype | None = None) -> str | None:
    """Why ``spec`` cannot be written in ``fmt`` and ``dtype`` (None, or ``model`` before the model is
    known: whatever dtype it turns out to be) (None: it can)."""
    fmt = checkpoint_format(fmt)
    if fmt is CheckpointFormat.GPTQ and spec.rotation is not None and spec.rotation.online() is not None:
        return ("The GPTQ format has no place for the rotations that a rotated model's inputs need at inference: "
                "write compressed-tensors, whose transform_config vLLM applies (or fuse the rotations alone).")
    if fmt is CheckpointFormat.GPTQ:
        return gptq_format.refusal(spec)
    known = _known_dtype(dtype)
    return compressed.refusal(spec) or (compressed.dtype_refusal(spec, known) if known is not None else None)


def serving_warning(spec: QuantSpec, fmt: CheckpointFormat | str, widths: list[int] | None = None) -> str | None:
    """What a loader will refuse in a checkpoint that can still be written (``widths``: the ones a
    mixed-precision checkpoint holds)."""
    return compressed.serving_warning(spec, widths) if checkpoint_format(fmt) is CheckpointFormat.COMPRESSED_TENSORS else None


@dataclass
class CheckpointSummary:
    folder: Path
    format: CheckpointFormat
    files: list[str]
    bytes: int
    seconds: float
    quantized_layers: int
    dtype: str = CheckpointDtype.BFLOAT16.value  # its float parts' and config's
    model_dtype: str = CheckpointDtype.BFLOAT16.value  # the dtype calibscope computed in
    warning: str | None = None
    extra: dict = field(default_factory=dict)

    def describe(self, shown_as: str | None = None) -> str:
        """One paragraph; ``shown_as``: the name to give the folder (a download's, not its temporary path)."""
        warning = f" Note: {self.warning}" if self.warning else ""
        computed = f" (computed in {self.model_dtype})" if self.model_dtype != self.dtype else ""
        return (f"Wrote {self.format.value} checkpoint '{shown_as or self.folder}': {self.quantized_layers} quantized layers, "
                f"float parts in {self.dtype}{computed}, {len(self.files)} safetensors file(s), "
                f"{self.bytes / 2**20:,.1f} MiB in {self.seconds:.1f} s. Loads in: {SERVES[self.format]}.{warning}")


class CheckpointWriter:
    """Writes ``loaded`` quantized as ``spec`` says to ``folder`` (which must not exist) in ``fmt``,
    its float parts in ``dtype``.

    Use as a context manager: ``add`` the quantized layers (any number of times), then ``finish``;
    leaving the block without finishing (an error, a cancel) removes everything written."""

    def __init__(self, loaded: LoadedModel, spec: QuantSpec, folder: str | Path,
                 fmt: CheckpointFormat | str = CheckpointFormat.COMPRESSED_TENSORS,
                 dtype: CheckpointDtype | str = CheckpointDtype.BFLOAT16, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 provenance: dict | None = None) -> None:
        self.loaded, self.spec, self.format = loaded, spec, checkpoint_format(fmt)
        self.folder = Path(folder).expanduser()
        if self.folder.exists():
            raise ExportError(f"'{self.folder}' already exists; calibscope never writes over a folder. Choose another name.")
        self.dtype = stored_dtype(loaded, dtype)
        reason = refusal(spec, self.format, self.dtype)
        if reason:
            raise ExportError(reason)
        self.scheme = compressed.scheme(spec) if self.format is CheckpointFormat.COMPRESSED_TENSORS else None
        self.widths: dict[int, list[str]] = {}  # mixed precision: each width's layers (one config group each)
        self._width_schemes: dict = {}  # each width's config group, made once (its targets set when the config is written)
        self.provenance = provenance or {}
        self.linear = {name for name, module in loaded.model.named_modules() if isinstance(module, torch.nn.Linear)}
        self.experts_modules = {layer.name: layer for layer in find_experts(loaded.model)}
        self.written: set[str] = set()
        self.floats: dict[str, torch.Tensor] = {}  # a rescaled plan's new norm gains and biases
        self.kv_layers = 0  # attention modules whose KV cache scales were written
        self.rotations: dict = {}  # layers whose input is rotated online (engine/export/transforms.py)
        self.expert_parameters: set[str] = set()  # fused experts' parameters written per expert, quantized
        self.float_routers: set[str] = set()
        self.started = time.perf_counter()
        self._stack = ExitStack()
        self._shard_bytes = max_shard_bytes
        self.finished = False

    def __enter__(self) -> Self:
        try:
            self.staging = self._stack.enter_context(staged_directory(self.folder))
        except OSError as error:
            raise _write_error(self.folder, error) from error
        self.shards = ShardWriter(self.staging, self._shard_bytes)
        return self

    def __exit__(self, kind, error, trace) -> bool:
        if not self.finished:  # an error, or a block left without finish(): the staging folder goes
            unfinished = error if error is not None else ExportError("not finished")
            self._stack.__exit__(type(unfinished), unfinished, trace)
        if isinstance(error, OSError):
            raise _write_error(self.folder, error) from error
        return False

    def add(self, plan: QuantizedModel) -> None:
        """Write the quantized layers of ``plan`` (their integers and grids)."""
        experts = self._expert_linears(plan)  # refused (an unwritable layout) before anything is written
        missing = set(plan.weights) - set(plan.integers)
        if missing:
            raise ExportError(f"The plan's weight for {min(missing)} was made outside calibscope (no integers and "
                              "grids were kept), so it cannot be written as a checkpoint; quantize it here.")
        unquantized = plan.rescaled - set(plan.integers)
        if unquantized:
            raise ExportError(f"{min(unquantized)} was rescaled (SmoothQuant or AWQ) but not quantized, so its rescaled "
                              "float weight has no place in the checkpoint; quantize every layer the rescaling touched.")
        self.floats.update(plan.floats)
        for name, tensor in transforms.transform_tensors(plan.rotations, self.dtype):  # one at a time
            self.shards.add({name: tensor})
        self.rotations.update(plan.rotations)
        if plan.kv_cache:
            self.shards.add(compressed.kv_cache_tensors(plan.kv_cache, self.dtype))
            self.kv_layers = len(plan.kv_cache)
        for name, integers in plan.integers.items():
            if name not in self.linear:
                raise ExportError(f"{name} is not a torch.nn.Linear layer; {self.format.value} checkpoints hold Linear "
                                  "layers only (a GPT-2 Conv1D model cannot be exported).")
            if self.format is CheckpointFormat.COMPRESSED_TENSORS:
                tensors = compressed.compressed_layer(name, integers, plan.inputs.get(name), self._scheme_of(name, integers),
                                                      self.dtype)
            else:
                tensors = gptq_format.layer_tensors(name, integers)
            self.shards.add(tensors)
            self.written.add(name)
        for layer, linears in experts:
            for name, integers in linears.items():
                self.shards.add(compressed.compressed_layer(name, integers, None, self.scheme, self.dtype))
                self.written.add(name)
            self.expert_parameters.update({f"{layer.name}.gate_up_proj", f"{layer.name}.down_proj"})
            if layer.router:  # float, and said so: vLLM reads the router as a Linear layer of the scheme otherwise
                self.float_routers.add(layer.router)

    def _scheme_of(self, name: str, integers: IntWeight):
        """The layer's config group: the scheme's, or under mixed precision its width's."""
        if self.spec.mixed is None:
            return self.scheme
        bits = integers.grids.bits
        self.widths.setdefault(bits, []).append(name)
        if bits not in self._width_schemes:
            self._width_schemes[bits] = compressed.scheme(compressed.width_spec(self.spec, bits))
        return self._width_schemes[bits]

    def _expert_linears(self, plan: QuantizedModel) -> list[tuple[ExpertsLayer, dict[str, IntWeight]]]:
        """Each quantized experts module and its per-expert Linear layers as its architecture's
        checkpoints hold them (engine/export/experts.py); its fused parameters are then not written as floats."""
        modules = {parameter.rpartition(".")[0] for parameter in plan.experts}
        if modules and self.format is not CheckpointFormat.COMPRESSED_TENSORS:
            raise ExportError("MoE experts are written in compressed-tensors checkpoints (the GPTQ format has no MoE "
                              "layout): choose compressed-tensors, or leave the experts out with a name pattern.")
        model_type = self.loaded.model.config.model_type
        return [(layer, expert_linears(model_type, layer, plan.expert_integers))
                for name, layer in self.experts_modules.items() if name in modules]

    def finish(self) -> CheckpointSummary:
        """The float tensors, config, tokenizer and generation config written, and the folder put in place."""
        if not self.written:
            raise ExportError("Nothing was quantized, so there is no quantized checkpoint to write.")
        if self.spec.kv_cache is not None and not self.kv_layers:  # transformers would load uninitialised scales
            raise ExportError("The scheme quantizes the KV cache but the plan has no KV cache scales; quantize it again.")
        left_float = sorted((self.linear | self.float_routers) - self.written)
        if self.format is CheckpointFormat.GPTQ and any(not _is_head(self.loaded, name) for name in left_float):
            first = next(name for name in left_float if not _is_head(self.loaded, name))
            raise ExportError(f"GPTQ loaders quantize every Linear layer of every block, and {first} was left float; "
                              "write compressed-tensors, which lists float layers in 'ignore'.")
        float32 = _kept_in_float32(self.loaded.model, self.dtype)
        for name, tensor in _float_tensors(self.loaded, self.written, self.floats, self.expert_parameters):
            self.shards.add({name: _in_dtype(name, tensor, self.dtype, float32)})
        files = self.shards.finish()
        self._write_metadata(left_float)
        self._stack.close()  # the staging folder becomes the target
        self.finished = True
        return CheckpointSummary(self.folder, self.format, files, self.shards.total_bytes,
                                 time.perf_counter() - self.started, len(self.written), _name(self.dtype),
                                 _name(_model_dtype(self.loaded)), serving_warning(self.spec, self.format, sorted(self.widths)))

    def _write_metadata(self, left_float: list[str]) -> None:
        config = copy.deepcopy(self.loaded.model.config)
        config.dtype = self.dtype
        if _untied(self.loaded, self.floats):  # fused rotations gave the LM head its own weight: loaders must not re-tie it
            for described in {id(config): config, id(config.get_text_config()): config.get_text_config()}.values():
                described.tie_word_embeddings = False
        config.save_pretrained(self.staging)
        if self.format is CheckpointFormat.COMPRESSED_TENSORS:
            schemes = ([self._width_schemes[bits].model_copy(update={"targets": sorted(names)})
                        for bits, names in sorted(self.widths.items())] if self.spec.mixed is not None else [self.scheme])
            described = compressed.quantization_config(schemes, left_float, compressed.kv_cache_args(self.spec))
            ModelCompressor(quantization_config=described,
                            transform_config=transforms.transform_config(self.spec, self.rotations)).update_config(
                str(self.staging))
        else:
            gptq_format.update_config(self.staging, self.spec)
        generation = getattr(self.loaded.model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(self.staging)
        self.loaded.tokenizer.save_pretrained(self.staging)
        widths = {"layers_per_width": {bits: len(names) for bits, names in sorted(self.widths.items())}} if self.widths else {}
        record = {"format": self.format.value, "scheme": self.spec.label(), "model": self.loaded.info.name, **widths,
                  "dtype": _name(self.dtype), "model_dtype": _name(_model_dtype(self.loaded)),
                  "quantized_layers": len(self.written), **self.provenance}
        (self.staging / PROVENANCE).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")


def save_quantized(loaded: LoadedModel, plan: QuantizedModel, spec: QuantSpec, folder: str | Path,
                   fmt: CheckpointFormat | str = CheckpointFormat.COMPRESSED_TENSORS,
                   dtype: CheckpointDtype | str = CheckpointDtype.BFLOAT16, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                   provenance: dict | None = None) -> CheckpointSummary:
    """Write ``loaded`` with ``plan``'s quantized layers (made by calibscope for ``spec``) to the new
    folder ``folder`` as ``fmt``, its float parts in ``dtype``; returns what was written."""
    with CheckpointWriter(loaded, spec, folder, fmt, dtype, max_shard_bytes, provenance) as writer:
        writer.add(plan)
        return writer.finish()


def _model_dtype(loaded: LoadedModel) -> torch.dtype:
    for parameter in loaded.model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _kept_in_float32(model: torch.nn.Module, dtype: torch.dtype) -> set[str]:
    """The name patterns the model's class keeps in float32 when it is loaded in ``dtype``
    (transformers' keep-in-fp32 lists: the strict one in either 16-bit dtype, the other in float16
    only), written as the model holds them: a loader would widen a 16-bit value, not restore it."""
    if dtype not in (torch.float16, torch.bfloat16):
        return set()
    patterns = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    if dtype == torch.float16:
        patterns |= set(getattr(model, "_keep_in_fp32_modules", None) or ())
    return patterns


def _in_dtype(name: str, tensor: torch.Tensor, dtype: torch.dtype, float32: set[str]) -> torch.Tensor:
    """A float tensor in the checkpoint's dtype (integers, and what the class keeps in float32, as they are)."""
    if not tensor.is_floating_point() or any(pattern in name for pattern in float32):
        return tensor
    return tensor.to(dtype)


def _untied(loaded: LoadedModel, floats: dict[str, torch.Tensor]) -> bool:
    """Whether ``floats`` give an LM head tied to the embeddings a value of its own (or the embeddings
    one); under the model's lock, where no other session's plan has untied them for a while."""
    model = loaded.model
    with loaded.lock:
        if not tied_head(model):
            return False
    names = {module: name for name, module in model.named_modules()}
    return (f"{names[model.get_output_embeddings()]}.weight" in floats
            or f"{names[model.get_input_embeddings()]}.weight" in floats)


def _is_head(loaded: LoadedModel, name: str) -> bool:
    head = loaded.model.get_output_embeddings() if hasattr(loaded.model, "get_output_embeddings") else None
    return head is not None and loaded.model.get_submodule(name) is head


def _float_tensors(loaded: LoadedModel, quantized: set[str], replaced: dict[str, torch.Tensor],
                   written: set[str] = frozenset()) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of the model's state dict but the quantized layers' weights, once each (a tied
    LM head is the embedding: written once, as save_pretrained does), read under the model's lock
    (no other session's quantized weights) or, for a model read block by block, from its checkpoint;
    ``replaced`` (a smoothed plan's norms) stands in for the model's own; ``written``: parameters
    already written another way (quantized experts)."""
    skip = {f"{name}.weight" for name in quantized} | set(written)
    source = loaded.weights if isinstance(loaded.weights, CheckpointWeights) else None
    with loaded.lock:
        state = loaded.model.state_dict()
        seen: set[tuple] = set()
        for name, tensor in state.items():
            if name in skip:
                continue
            if name in replaced:
                yield name, replaced[name].to(tensor.dtype)
                continue
            if source is not None and tensor.is_meta:
                if not source.holds(name):  # tied to a tensor the checkpoint holds once
                    continue
                yield name, source.read(name)
                continue
            identity = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
            if identity in seen:
                continue
            seen.add(identity)
            yield name, tensor


def _write_error(folder: Path, error: OSError) -> ExportError:
    if isinstance(error, FileExistsError):
        return ExportError(f"'{folder}' was created by something else while the checkpoint was being written; it was left as "
                           "it is and nothing was written over it. Choose another name.")
    if error.errno == errno.ENOSPC:
        return ExportError(f"The disk is full: '{folder}' was not written, and nothing of it was left behind. "
                           "Free some space (the checkpoint takes about the quantized model's size) or choose another disk.")
    return ExportError(f"Could not write '{folder}': {error.strerror or error}. Nothing of it was left behind.")
