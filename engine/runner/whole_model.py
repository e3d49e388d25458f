"""The whole-model runner: every calibration batch through the resident model once, observed tensors
routed to accumulators, the forward stopped after the last observed layer and the LM head skipped
unless it is observed."""
from __future__ import annotations

from collections import defaultdict

import torch

from engine.hooks import headless_forward, observing, tap_key
from engine.models import LoadedModel, block_of
from engine.progress import Progress, no_progress
from engine.runner import distributed
from engine.runner.request import FinishedBlock, PassRequest, PassResult
from engine.runner.router import Router, batch_tokens
from engine.sampling import CalibrationSet


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def whole_model_pass(loaded: LoadedModel, calibration: CalibrationSet, request: PassRequest, batches: list[list[int]],
                     progress: Progress = no_progress) -> PassResult:
    """Stream ``batches`` through the model once, feeding each observed tensor's real tokens (as
    [tokens, channels]) to an accumulator; then finish every block in order (``after_block``)."""
    layers, sides = request.layers, request.sides
    head = next((layer.module for layer in layers if layer.is_head), None)
    # the forward stops after the last observed layer, unless experts (which may follow it) are observed too
    stop = tap_key(layers[-1].name, sides[-1]) if layers and head is None and not request.experts else ""
    router = Router(request.factory, stop_after=stop, share_inputs=request.share_inputs, experts_factory=request.experts_factory)
    device = model_device(loaded.model)
    with loaded.lock, observing(router.points(layers, sides, request.experts)), torch.inference_mode():
        for number, rows in enumerate(batches):
            ids, mask = calibration.pad(rows)
            router.start_batch(batch_tokens(rows, mask).to(device))
            headless_forward(loaded.model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, head)
            router.end_batch()
            progress((number + 1) / len(batches), f"Batch {number + 1} of {len(batches)}")
    with torch.inference_mode():  # the accumulators are inference tensors: finish them as such, outside the lock
        distributed.all_reduce(router.accumulators)
        return PassResult(finish_blocks(router.accumulators, router.shared, request), router.shared)


def finish_blocks(accumulators: dict[str, object], shared: dict[str, str], request: PassRequest) -> dict[str, object]:
    """``after_block`` on each block's accumulators in block order (outside the blocks last); what
    it leaves is the pass's result. One pass: weights it returns change nothing downstream."""
    if request.after_block is None:
        return accumulators
    by_block = defaultdict(dict)
    for key, accumulator in accumulators.items():
        by_block[block_of(key)][key] = accumulator
    kept = {}
    for block in sorted(by_block, key=lambda index: (index < 0, index)):
        block_shared = {key: leader for key, leader in shared.items() if leader in by_block[block]}
        request.after_block(FinishedBlock(block, by_block[block], block_shared))
        kept.update(by_block[block])
    return kept
