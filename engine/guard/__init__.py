"""What a deployment allows and how much it may spend: the guard in force for the work running now.

A ``Guard`` holds the input ``Policy`` (what may be read), the ``ReadLimits`` of files, the
``ModelLimits`` of hub models, and, on a shared deployment, the ``MemoryBudget`` and ``DiskQuota``
of the whole process. The dashboard makes one and runs every handler under it (``guarded``); every
loader and pass asks ``current()``, so no field or upload reaches a file, and no work starts,
without the guard's say. Outside ``guarded`` (the CLI, the Python API, tests) the local guard
applies: every path allowed, no budgets beyond the memory actually free.
"""
from engine.guard.context import LOCAL, Guard, ModelLimits, current, guarded
from engine.guard.disk import DiskQuota, tree_bytes
from engine.guard.isolated import run_isolated
from engine.guard.memory import (
    MemoryBudget,
    Use,
    give_back_freed,
    held_bytes,
    peak_resident_bytes,
    resident_bytes,
    return_freed_memory_promptly,
)
from engine.guard.policy import Policy
from engine.guard.reading import DecodedCount, ReadLimits

__all__ = ["LOCAL", "DecodedCount", "DiskQuota", "Guard", "MemoryBudget", "ModelLimits", "Policy", "ReadLimits", "Use",
           "current", "give_back_freed", "guarded", "held_bytes", "peak_resident_bytes", "resident_bytes",
           "return_freed_memory_promptly", "run_isolated", "tree_bytes"]
