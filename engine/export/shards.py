"""Tensors to safetensors shards as they come, with the index transformers and vLLM read.

Shards are named model-0000i-of-0000n.safetensors only once n is known (at ``finish``); a checkpoint
that fits in one shard is a single model.safetensors, as ``save_pretrained`` writes it. At most one
shard's tensors are held at once, so a model is written in the memory of a shard and a block.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.models.offload import INDEX, SINGLE

DEFAULT_SHARD_BYTES = 2**30  # what the writer holds before a shard is written: memory stays bounded


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class ShardWriter:
    """Collects named tensors into shards of at most ``max_bytes`` (a larger tensor gets a shard of
    its own) written to ``folder`` as each fills."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        self.folder, self.max_bytes = Path(folder), max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []  # the tensor names of each shard written
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            if name in self.pending or any(name in shard for shard in self.shards):
                raise ValueError(f"{name} was written twice")
            size = tensor_bytes(tensor)
            if self.pending and self.pending_bytes + size > self.max_bytes:
                self.flush()
            self.pending[name] = tensor.detach().to("cpu").contiguous()
            self.pending_bytes += size

    def flush(self) -> None:
        if not self.pending:
            return
        save_file(self.pending, self.folder / self._temporary(len(self.shards)), metadata={"format": "pt"})
        self.shards.append(sorted(self.pending))
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """The last shard written, every shard given its final name, and the index (when more than
        one): the file names, in order."""
        self.flush()
        count = len(self.shards)
        names = [SINGLE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        for number, name in enumerate(names):
            os.replace(self.folder / self._temporary(number), self.folder / name)
        if count > 1:
            weight_map = {tensor: file for file, shard in zip(names, self.shards) for tensor in shard}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return names

    @staticmethod
    def _temporary(number: int) -> str:
        return f"shard-{number:05d}.partial.safetensors"
