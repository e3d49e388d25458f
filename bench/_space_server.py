"""The shared-Space server as bench/hostile.py starts it: `calibscope --shared-space` in this process,
with an audit hook that records every file operation on a path inside the canary folder (files of
the server no visitor may read) into a log. Run as `python -m bench._space_server PORT`; the canary
folder and the log come from CALIBSCOPE_BENCH_CANARY and CALIBSCOPE_BENCH_AUDIT.
"""
from __future__ import annotations

import os
import sys

WATCHED = ("open", "os.listdir", "os.scandir", "os.rename", "os.remove", "os.symlink", "shutil.copyfile", "shutil.rmtree",
           "os.chmod", "os.truncate", "glob.glob", "subprocess.Popen")


def audit(canary: str, log) -> None:
    """Record (event, path) for every watched event naming a path inside ``canary``."""
    inside = os.path.realpath(canary)

    def hook(event: str, args: tuple) -> None:
        if event not in WATCHED:
            return
        for argument in args if event == "subprocess.Popen" else args[:2]:
            values = argument if isinstance(argument, (list, tuple)) else [argument]
            for value in values:
                if isinstance(value, (str, bytes, os.PathLike)):
                    path = os.fsdecode(value)
                    if inside in os.path.realpath(path) or canary in path:
                        log.write(f"{event}\t{path}\n")

    sys.addaudithook(hook)


def watch_ledger(path: str) -> None:
    """Every half second: this process's resident memory beside what the app's memory ledger holds."""
    import json
    import threading
    import time

    from engine.guard import MemoryBudget, resident_bytes

    budgets = []
    made = MemoryBudget.__init__

    def remembered(self, *args, **kwargs):
        made(self, *args, **kwargs)
        budgets.append(self)

    MemoryBudget.__init__ = remembered

    def sample() -> None:
        with open(path, "a", buffering=1) as out:
            while True:
                for budget in budgets:
                    entries = [(entry.use.value, entry.what, round(entry.bytes / 2**20)) for entry in budget.entries()]
                    out.write(json.dumps({"t": round(time.time(), 1), "rss_mb": round(resident_bytes() / 2**20),
                                          "ledger_mb": round(budget.used() / 2**20), "entries": entries}) + "\n")
                time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()


def main() -> None:
    log = open(os.environ["CALIBSCOPE_BENCH_AUDIT"], "a", buffering=1)  # noqa: SIM115 - open for the process's life
    audit(os.environ["CALIBSCOPE_BENCH_CANARY"], log)
    if os.environ.get("CALIBSCOPE_BENCH_LEDGER"):
        watch_ledger(os.environ["CALIBSCOPE_BENCH_LEDGER"])
    from ui.cli import main as calibscope

    calibscope(["--shared-space", "--host", "127.0.0.1", "--port", sys.argv[1], "--log-level", "WARNING"])


if __name__ == "__main__":
    main()
