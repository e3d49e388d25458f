"""A reader of a visitor's file in a process of its own, with its memory and time capped.

Some parsers are C++ that aborts the whole process on a malformed file: a one-byte change in a
parquet footer makes pyarrow call abort(), which would take a shared Space down with every visitor
on it. Such a reader runs as a script in a fresh interpreter (``-I``: no site packages of the user,
no environment hooks), which caps its own memory and CPU time before it imports anything; the
request goes in as JSON on stdin and the answer comes back as JSON on stdout, so nothing the child
makes is ever unpickled here.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from engine.errors import CalibscopeError, OverBudget

BASE_MEMORY = 384 * 2**20  # the interpreter and its imports (pyarrow, numpy) before any data


def run_isolated(script: Path, request: dict, memory_bytes: int, seconds: float, what: str,
                 environment: dict[str, str] | None = None) -> dict:
    """``script``'s JSON answer to ``request``; a crash, a timeout or a refusal to answer becomes a
    CalibscopeError that names ``what`` was being read. ``environment`` is added to this process's."""
    limits = {"memory_bytes": int(BASE_MEMORY + memory_bytes), "cpu_seconds": int(seconds) + 1}
    try:
        done = subprocess.run([sys.executable, "-I", str(script)], input=json.dumps({**request, "limits": limits}),
                              capture_output=True, text=True, timeout=seconds, check=False,
                              env={**os.environ, **(environment or {})})
    except subprocess.TimeoutExpired:
        raise OverBudget(f"Reading {what} took longer than {seconds:,.0f} s, the limit here; use a smaller or simpler "
                         "file.") from None
    if done.returncode < 0 or done.returncode in (134, 137, 139):
        number = -done.returncode if done.returncode < 0 else done.returncode - 128
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        raise CalibscopeError(f"{what} could not be read: its reader stopped with {name}, which a valid file never causes. "
                              "Check that the file is whole (upload it again), or save it again with pandas or pyarrow.")
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        tail = (done.stderr.strip().splitlines() or ["no message"])[-1][:200]
        if "MemoryError" in done.stderr:
            raise OverBudget(f"{what} needs more memory to read than the {memory_bytes / 2**20:,.0f} MB allowed here; use a "
                             "smaller file.") from None
        raise CalibscopeError(f"{what} could not be read ({tail}).") from None
    return answer
