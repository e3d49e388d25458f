"""Where a block's weights come from when its turn comes, and where they go afterwards.

``ResidentWeights``: the whole model is in memory (on the execution device, or in CPU memory with
blocks moved to the device one at a time). ``CheckpointWeights``: the model is a skeleton on the
``meta`` device and each block is read from the safetensors checkpoint on disk, converted to the
execution dtype, and dropped again, so the whole model is never in memory. Each safetensors file is
opened only while a module is read from it, so the pages it maps do not accumulate.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from engine.errors import ModelLoadError
from engine.specs import Offload

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
FITS = 0.8  # a model "fits" when its weights take at most this share of the free memory


def available_bytes(device: torch.device) -> int:
    """Memory free on ``device``: the CUDA allocator's free memory (its cache counted as free), or
    the host's available memory (MemAvailable) for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def decide_offload(requested: Offload, weight_bytes: Callable[[], int], device: torch.device) -> Offload:
    """``requested`` unless it is auto: no offload when the weights fit on the device, else CPU
    memory when they fit there (and the device is an accelerator), else the checkpoint on disk."""
    if requested is not Offload.AUTO:
        return requested
    need = weight_bytes()
    if need <= available_bytes(device) * FITS:
        return Offload.NONE
    if device.type != "cpu" and need <= available_bytes(torch.device("cpu")) * FITS:
        return Offload.CPU
    return Offload.DISK


def skeleton(folder: str | Path, dtype: torch.dtype) -> nn.Module:
    """The model built from its config with every parameter on ``meta`` (no memory); buffers made
    at construction (rotary frequencies, embedding scales) are real, as the checkpoint lacks them."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)


class ResidentWeights:
    """The model lives on ``home``; a block moves to the execution device for its turn."""

    resident = True

    def __init__(self, home: torch.device) -> None:
        self.home = torch.device(home)

    def onload(self, module: nn.Module, prefix: str, device: torch.device) -> None:
        if torch.device(device) != self.home:
            module.to(device)

    def offload(self, module: nn.Module, prefix: str) -> None:
        module.to(self.home)


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attribute = name.rpartition(".")
    return (module.get_submodule(path) if path else module), attribute


def _place(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, attribute = _owner(module, name)
    if attribute in owner._parameters:
        owner._parameters[attribute] = nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[attribute] = tensor


class CheckpointWeights:
    """Parameters read from a safetensors checkpoint (one file, or shards with an index) on demand."""

    resident = False

    def __init__(self, folder: str | Path, dtype: torch.dtype, key_prefix: str = "") -> None:
        self.folder = Path(folder)
        self.dtype = dtype
        self.key_prefix = key_prefix  # e.g. "model." when module names and checkpoint keys differ by it
        if (self.folder / INDEX).is_file():
            self.files = json.loads((self.folder / INDEX).read_text())["weight_map"]
        elif (self.folder / SINGLE).is_file():
            with safe_open(self.folder / SINGLE, framework="pt") as handle:
                # safe_open has keys() but is neither iterable nor a container (SIM118's fix would raise)
                self.files = {key: SINGLE for key in handle.keys()}  # noqa: SIM118
        else:
            raise ModelLoadError(f"'{self.folder}' has no safetensors checkpoint ({INDEX} or {SINGLE}); "
                                 "block-by-block loading from disk needs one.")

    def _key(self, name: str) -> str:
        if name in self.files:
            return name
        stripped = name.removeprefix(self.key_prefix)
        if stripped in self.files:
            return stripped
        raise ModelLoadError(f"The checkpoint in '{self.folder}' has no tensor '{name}'.")

    def holds(self, name: str) -> bool:
        return name in self.files or name.removeprefix(self.key_prefix) in self.files

    def read(self, name: str) -> torch.Tensor:
        """One tensor from disk, in the execution dtype if it is floating point."""
        key = self._key(name)
        with safe_open(self.folder / self.files[key], framework="pt", device="cpu") as handle:
            tensor = handle.get_tensor(key)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    def onload(self, module: nn.Module, prefix: str, device: torch.device) -> None:
        """Every parameter still on ``meta`` read from disk onto ``device`` in the execution dtype;
        buffers computed at construction (rotary frequencies) are moved there as they are."""
        wanted = defaultdict(list)
        for name, tensor in module.state_dict(keep_vars=True).items():
            if tensor.is_meta:
                key = self._key(f"{prefix}.{name}" if prefix else name)
                wanted[self.files[key]].append((name, key))
        for file, names in wanted.items():
            with safe_open(self.folder / file, framework="pt", device="cpu") as handle:
                for name, key in names:
                    tensor = handle.get_tensor(key)
                    dtype = self.dtype if tensor.is_floating_point() else tensor.dtype
                    _place(module, name, tensor.to(device=device, dtype=dtype))
        for name, buffer in module.named_buffers():
            if not buffer.is_meta and buffer.device != torch.device(device):
                _place(module, name, buffer.to(device))

    def offload(self, module: nn.Module, prefix: str) -> None:
        """Parameters back to ``meta``: their memory is freed."""
        for name, parameter in list(module.named_parameters()):
            _place(module, name, torch.empty_like(parameter, device="meta"))
