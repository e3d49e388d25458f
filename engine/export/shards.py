"""Tensors to safetensors shards as they come, with the index transformers and vLLM read.

Each tensor's bytes go to disk when it is added (nothing is held: a model is written in the memory
of its largest tensor, not of a shard); a shard's file is put together when it is full. The format
is safetensors' own: an 8-byte little-endian header length, the JSON header (padded with spaces to
a multiple of 8), then every tensor's bytes with no gaps, ordered by element size, largest first,
so each tensor starts at a multiple of its own element size (the order safetensors' writer
keeps). Shards are named model-0000i-of-0000n.safetensors only once n is known (at ``finish``); a
checkpoint that fits in one shard is a single model.safetensors, as ``save_pretrained`` writes it.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

import torch

from engine.models import SAFETENSORS_INDEX, SAFETENSORS_SINGLE

DEFAULT_SHARD_BYTES = 2 * 2**30
DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2", torch.int64: "I64", torch.int32: "I32",
          torch.int16: "I16", torch.int8: "I8", torch.uint64: "U64", torch.uint32: "U32", torch.uint16: "U16",
          torch.uint8: "U8", torch.bool: "BOOL"}


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def write_bytes(file: BinaryIO, data) -> None:
    """Every write of a shard goes through here (a full disk raises OSError from it)."""
    file.write(data)


class _Shard:
    """One shard being written: each tensor's bytes appended, as it is added, to the part file of
    its element size; ``close`` writes the header and the parts, largest elements first."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parts: dict[int, tuple[Path, BinaryIO]] = {}
        self.entries: dict[str, tuple[str, list[int], int, int, int]] = {}  # dtype, shape, part, start, end
        self.bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.dtype not in DTYPES:
            raise ValueError(f"{name}: safetensors has no dtype for {tensor.dtype}")
        size = tensor.element_size()
        if size not in self.parts:
            part = self.path.with_name(f"{self.path.name}.part{size}")
            self.parts[size] = (part, open(part, "wb"))  # noqa: SIM115  (closed in close())
        raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        file = self.parts[size][1]
        start = file.tell()
        write_bytes(file, memoryview(raw))
        self.entries[name] = (DTYPES[tensor.dtype], list(tensor.shape), size, start, start + raw.nbytes)
        self.bytes += raw.nbytes

    def close(self) -> None:
        for _, file in self.parts.values():
            file.close()
        base, offset = {}, 0
        for size in sorted(self.parts, reverse=True):
            base[size] = offset
            offset += self.parts[size][0].stat().st_size
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        for name, (dtype, shape, size, start, end) in self.entries.items():
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [base[size] + start, base[size] + end]}
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)
        with open(self.path, "wb") as out:
            write_bytes(out, struct.pack("<Q", len(encoded)))
            write_bytes(out, encoded)
            for size in sorted(self.parts, reverse=True):
                with open(self.parts[size][0], "rb") as part:
                    while chunk := part.read(64 * 2**20):
                        write_bytes(out, chunk)
                self.parts[size][0].unlink()

    def discard(self) -> None:
        for path, file in self.parts.values():
            file.close()
            path.unlink(missing_ok=True)


class ShardWriter:
    """Writes named tensors into shards of at most ``max_bytes`` (a larger tensor gets a shard of
    its own) in ``folder``, each tensor to disk as it is added."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        self.folder, self.max_bytes = Path(folder), max_bytes
        self.current: _Shard | None = None
        self.shards: list[list[str]] = []  # the tensor names of each shard written
        self.names: set[str] = set()
        self.total_bytes = 0

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            if name in self.names:
                raise ValueError(f"{name} was written twice")
            if self.current is not None and self.current.bytes + tensor_bytes(tensor) > self.max_bytes:
                self.flush()
            if self.current is None:
                self.current = _Shard(self.folder / self._temporary(len(self.shards)))
            self.current.add(name, tensor)
            self.names.add(name)

    def flush(self) -> None:
        if self.current is None:
            return
        try:
            self.current.close()
        except BaseException:
            self.current.discard()
            raise
        self.shards.append(sorted(self.current.entries))
        self.total_bytes += self.current.bytes
        self.current = None

    def finish(self) -> list[str]:
        """The last shard written, every shard given its final name, and the index (when more than
        one): the file names, in order."""
        self.flush()
        count = len(self.shards)
        names = [SAFETENSORS_SINGLE] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        for number, name in enumerate(names):
            os.replace(self.folder / self._temporary(number), self.folder / name)
        if count > 1:
            weight_map = {tensor: file for file, shard in zip(names, self.shards) for tensor in shard}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return names

    @staticmethod
    def _temporary(number: int) -> str:
        return f"shard-{number:05d}.partial.safetensors"

