"""How a calibration set flows through a model: whole at once, or block by block with weights and
activations offloaded, on one process or data-parallel over ``torch.distributed``. ``run_pass``
plans the memory and picks the runner."""
from __future__ import annotations

from engine.models import LoadedModel
from engine.progress import Progress, no_progress
from engine.runner import distributed
from engine.runner.blockwise import blockwise_pass
from engine.runner.plan import Execution, MemoryPlan, pass_size, plan_pass
from engine.runner.request import AfterBlock, Factory, FinishedBlock, PassRequest, PassResult
from engine.runner.router import BatchTokens, Router, batch_tokens
from engine.runner.whole_model import model_device, whole_model_pass
from engine.sampling import CalibrationSet
from engine.scratch import pass_scratch


def plan_for(loaded: LoadedModel, calibration: CalibrationSet, request: PassRequest) -> MemoryPlan:
    """The memory plan ``run_pass`` would follow for this request."""
    size = pass_size(loaded, calibration, request.layers, request.state_bytes, request.batch_size)
    return plan_pass(loaded, size, request.execution, request.propagate, request.budget)


def run_pass(loaded: LoadedModel, calibration: CalibrationSet, request: PassRequest,
             progress: Progress = no_progress) -> PassResult:
    """One pass of ``calibration`` as ``request`` asks, on the runner the memory plan chooses; this
    rank's shard of the batches when running data-parallel."""
    plan = plan_for(loaded, calibration, request)
    batches = distributed.shard(request.batches or calibration.batch_indices(request.batch_size, by_length=True))
    progress(0.0, f"Plan: {plan.execution.value} ({plan.reason})")
    with pass_scratch():  # the accumulators' per-batch temporaries reuse buffers for the pass
        if plan.execution is Execution.WHOLE:
            result = whole_model_pass(loaded, calibration, request, batches, progress)
        else:
            result = blockwise_pass(loaded, calibration, request, batches, plan, progress)
    result.plan = plan
    return result


__all__ = ["AfterBlock", "BatchTokens", "Execution", "Factory", "FinishedBlock", "MemoryPlan", "PassRequest", "PassResult",
           "Router", "batch_tokens", "distributed", "model_device", "plan_for", "run_pass"]
