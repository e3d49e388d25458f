"""How a calibration set flows through a model: whole at once, or block by block with weights and
activations offloaded, on one process or data-parallel over ``torch.distributed``. ``run_pass``
plans the memory and picks the runner."""
from engine.runner import distributed
from engine.runner.blockwise import swapped
from engine.runner.capture import BlockCall, capture_batch
from engine.runner.passes import fitted, plan_for, run_pass
from engine.runner.plan import Execution, MemoryPlan, batch_working_bytes
from engine.runner.request import AfterBlock, Factory, FinishedBlock, PassRequest, PassResult
from engine.runner.router import BatchTokens, Router, batch_tokens
from engine.runner.whole_model import model_device

__all__ = ["AfterBlock", "BatchTokens", "BlockCall", "Execution", "Factory", "FinishedBlock", "MemoryPlan", "PassRequest",
           "PassResult", "Router", "batch_tokens", "batch_working_bytes", "capture_batch", "distributed", "fitted",
           "model_device", "plan_for", "run_pass", "swapped"]
