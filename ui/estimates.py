"""How long a step will take, said before it starts.

A step's work is counted in token-forwards (one token through the model's blocks): statistics cost
about 1.3 of them per calibration token, Hessians about 2, a sweep 2 per token and shuffle, and so
on. Until this app has timed a step on a model, a token-forward is priced from the model's size
and the device (2 FLOPs per non-embedding parameter, at a throughput typical of the device); after
that, from what the step took here, so estimates follow this machine.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from engine.models import LoadedModel
from engine.progress import Progress

FLOPS = {"cpu": 1e11, "cuda": 2e14, "mps": 5e12}  # sustained FLOP/s, roughly: a 2-core CPU, an H100, Apple silicon
# token-forwards per unit
COST = {"statistics": 1.3, "kv_cache": 1.2, "imatrix": 1.1,
        "coverage": 1.5, "hessians": 2.0, "sweep": 2.2, "quantize": 2.5, "compare": 8.0}


def seconds_per_token(loaded: LoadedModel) -> float:
    """A token-forward priced from the model's size: the embedding and head are lookups and skipped."""
    embedding = loaded.model.get_input_embeddings().weight.numel()
    blocks = max(loaded.info.parameters - 2 * embedding, loaded.info.parameters // 4)
    return 2 * blocks / FLOPS.get(loaded.device.type, FLOPS["cpu"])


@dataclass
class StepTimes:
    """Seconds per unit of work of each (model, step) this app has run: the estimates' correction."""

    rates: dict[tuple[str, str], float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def estimate(self, loaded: LoadedModel, step: str, units: float) -> float:
        with self._lock:
            rate = self.rates.get((loaded.info.name, step))
        return units * (rate if rate is not None else COST[step] * seconds_per_token(loaded))

    def record(self, loaded: LoadedModel, step: str, units: float, seconds: float) -> None:
        if units > 0:
            with self._lock:
                self.rates[(loaded.info.name, step)] = seconds / units


def spoken(seconds: float) -> str:
    """'about 40 s', 'about 3 min'."""
    if seconds < 90:
        return f"about {max(1, round(seconds)):,} s"
    return f"about {seconds / 60:,.0f} min"


@contextmanager
def timed_step(times: StepTimes, loaded: LoadedModel, step: str, units: float, progress: Progress) -> Iterator[float]:
    """Say the estimate as the step starts; remember what it took when it ends well."""
    estimate = times.estimate(loaded, step, units)
    progress(0.0, f"Starting: {spoken(estimate)} on this machine")
    started = time.perf_counter()
    yield estimate
    times.record(loaded, step, units, time.perf_counter() - started)
