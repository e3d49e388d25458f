"""The hidden states between blocks, one tensor per batch: on the execution device, in (pinned) CPU
memory, or in files on disk, as the memory plan decides."""
from __future__ import annotations

import shutil
import tempfile
from enum import Enum
from pathlib import Path

import torch

from engine import guard


class Location(str, Enum):
    """Where something lives during a pass."""

    DEVICE = "device"
    CPU = "cpu"
    DISK = "disk"


class ActivationStore:
    """``put(batch, tensor)`` keeps a batch's hidden states where the plan says; ``get(batch,
    device)`` brings them back. A batch's slot is overwritten in place by the next block's input."""

    def __init__(self, location: Location, device: torch.device) -> None:
        self.location = Location(location)
        self.device = torch.device(device)
        self._slots: dict[int, torch.Tensor] = {}
        # on disk: in the guard's working folder, where its disk quota counts them
        self._folder = (Path(tempfile.mkdtemp(prefix="calibscope-activations-", dir=guard.current().work_dir))
                        if self.location is Location.DISK else None)

    def put(self, batch: int, tensor: torch.Tensor) -> None:
        if self.location is Location.DEVICE:
            self._slots[batch] = tensor
        elif self.location is Location.CPU:  # from an accelerator into page-locked memory: asynchronous copies
            self._slots[batch] = _pinned_copy(tensor) if tensor.is_cuda else tensor.to("cpu")
        else:
            torch.save(tensor.cpu(), self._folder / f"{batch}.pt")

    def get(self, batch: int, device: torch.device) -> torch.Tensor:
        if self.location is Location.DISK:
            return torch.load(self._folder / f"{batch}.pt", map_location=device, weights_only=True)
        return self._slots[batch].to(device, non_blocking=True)

    def close(self) -> None:
        self._slots.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


def _pinned_copy(tensor: torch.Tensor) -> torch.Tensor:
    host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host
