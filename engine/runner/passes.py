"""``run_pass``: one pass of a calibration set as a PassRequest asks, its batches fitted to the memory
free, on the runner the memory plan picks (the whole model at once, or block by block)."""
from __future__ import annotations

from dataclasses import replace

from engine import guard
from engine.models import LoadedModel
from engine.progress import Progress, no_progress
from engine.runner import distributed
from engine.runner.blockwise import blockwise_pass
from engine.runner.plan import Execution, MemoryPlan, fit_batches, pass_size, plan_pass
from engine.runner.request import PassRequest, PassResult
from engine.runner.whole_model import whole_model_pass
from engine.sampling import CalibrationSet
from engine.scratch import pass_scratch


def fitted(loaded: LoadedModel, calibration: CalibrationSet, request: PassRequest) -> tuple[PassRequest, str]:
    """The request with its batches split where one would not fit the memory free (a note says so)."""
    asked = request.batches or calibration.batch_indices(request.batch_size, by_length=True)
    size = pass_size(loaded, calibration, request.layers, request.state_bytes, request.batch_size, asked)
    whole = loaded.resident and request.execution is not Execution.BLOCKWISE and not request.propagate
    fixed = size.state_total if whole else size.state_largest_block + size.largest_block * (not loaded.resident)
    batches, note = fit_batches(loaded, calibration, asked, fixed)
    return replace(request, batches=batches), note


def _planned(loaded: LoadedModel, calibration: CalibrationSet, request: PassRequest, note: str) -> MemoryPlan:
    size = pass_size(loaded, calibration, request.layers, request.state_bytes, request.batch_size, request.batches)
    plan = plan_pass(loaded, size, request.execution, request.propagate, request.budget)
    return replace(plan, reason=f"{plan.reason}; {note}") if note else plan


def plan_for(loaded: LoadedModel, calibration: CalibrationSet, request: PassRequest) -> MemoryPlan:
    """The memory plan ``run_pass`` would follow for this request (batches as it would split them)."""
    return _planned(loaded, calibration, *fitted(loaded, calibration, request))


def run_pass(loaded: LoadedModel, calibration: CalibrationSet, request: PassRequest,
             progress: Progress = no_progress) -> PassResult:
    """One pass of ``calibration`` as ``request`` asks, on the runner the memory plan chooses; this
    rank's shard of the batches when running data-parallel. What the pass holds in CPU memory is
    reserved in the guard's memory budget while it runs (refused before it starts if it does not fit)."""
    request, note = fitted(loaded, calibration, request)
    plan = _planned(loaded, calibration, request, note)
    batches = distributed.shard(request.batches)
    progress(0.0, f"Plan: {plan.execution.value} ({plan.reason})")
    current = guard.current()
    with current.reserve_memory("This pass", plan.host_bytes()), current.reserve_disk("This pass", plan.disk_bytes()), \
            pass_scratch():
        if plan.execution is Execution.WHOLE:  # the scratch buffers: the accumulators' per-batch temporaries, reused
            result = whole_model_pass(loaded, calibration, request, batches, progress)
        else:
            result = blockwise_pass(loaded, calibration, request, batches, plan, progress)
    result.plan = plan
    return result
