"""Data-parallel passes over ``torch.distributed``: every rank runs the same model (or block) on its
contiguous shard of the batches, then accumulators are all-reduced (sums; MIN and MAX for ranges),
so every rank holds the single-process result. Rank 0 writes what is written.

Launch with ``torchrun --nproc-per-node N`` (gloo on CPUs, NCCL on GPUs); a process that is not
part of an initialized process group runs alone, unchanged.
"""
from __future__ import annotations

import os

import torch

from engine.errors import CalibscopeError


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside ``torch.distributed``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_environment() -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR...):
    NCCL with one GPU per local rank where there are GPUs, gloo otherwise. (0, 1) when not launched so."""
    dist = torch.distributed
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world()


def is_writer() -> bool:
    return world()[0] == 0


def shard(batches: list[list[int]]) -> list[list[int]]:
    """This rank's contiguous share of the batches (rank 0 the first ones, as a single process
    would read them), as even as whole batches allow."""
    rank, size = world()
    if size == 1:
        return batches
    if len(batches) < size:
        raise CalibscopeError(f"{len(batches)} batches cannot be shared by {size} ranks: use more samples or a smaller "
                              "batch size, or fewer ranks.")
    start, stop = len(batches) * rank // size, len(batches) * (rank + 1) // size
    return batches[start:stop]


def all_reduce(accumulators: dict[str, object]) -> None:
    """Merge each accumulator over the ranks, in a fixed order (the same keys on every rank)."""
    if world()[1] == 1:
        return
    for key in sorted(accumulators):
        accumulators[key].all_reduce()
