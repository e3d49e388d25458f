"""The block-by-block runner: one decoder block on the execution device at a time.

1. Capture: for each batch, the embeddings' output (block 0's input) and the arguments every block
   is called with (masks, rotary embeddings), with every block stubbed out (engine.runner.capture).
2. For each block: bring its weights to the device (from CPU memory, or from the checkpoint on disk),
   run every batch through it with the accumulators of its layers observing, finish it
   (``after_block``: diagnose, quantize, write out, free), optionally run it again with the weights
   ``after_block`` returned so the next block sees quantized outputs, and send it back.
Blocks after the last observed layer are not run. The activations between blocks live where the
memory plan says (device, pinned CPU memory, or disk). With the same batches, each block computes
exactly what it computes inside the whole model, so the accumulators equal a whole-model pass's.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from engine.errors import CalibscopeError
from engine.hooks import Side, StopForward, base_model, block_prefix, decoder_blocks, observing
from engine.models import LinearLayer, LoadedModel, block_of
from engine.progress import Progress, no_progress, scaled
from engine.runner import distributed
from engine.runner.activations import ActivationStore, Location
from engine.runner.capture import BlockCall, capture_batch, moved
from engine.runner.plan import MemoryPlan
from engine.runner.request import FinishedBlock, PassRequest, PassResult
from engine.runner.router import BatchTokens, Router, batch_tokens
from engine.sampling import CalibrationSet


def layers_by_block(layers: list[LinearLayer], prefix: str) -> dict[int, list[LinearLayer]]:
    """Observed layers grouped by the block they sit in; a layer outside the blocks is refused."""
    grouped = defaultdict(list)
    for layer in layers:
        if not layer.name.startswith(prefix + "."):
            raise CalibscopeError(f"{layer.name} is outside the decoder blocks; the block-by-block runner observes layers "
                                  "inside them only (leave out the LM head, or run the whole model).")
        grouped[int(layer.name[len(prefix) + 1:].split(".")[0])].append(layer)
    return dict(grouped)


def outside_blocks(model: nn.Module, blocks: nn.ModuleList) -> list[tuple[str, nn.Module]]:
    """The base model's direct children other than the blocks (embeddings, rotary embeddings,
    norms): what the capture forward needs. The LM head is not among them."""
    base = base_model(model)
    prefix = next(name for name, module in model.named_modules() if module is base)
    return [(f"{prefix}.{name}" if prefix else name, child) for name, child in base.named_children() if child is not blocks]


@contextmanager
def swapped(block: nn.Module, prefix: str, weights: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """The block runs with ``weights`` (module name -> its weight, or a parameter's full name -> its
    value: an experts module's fused weights) in place of its own, then gets them back."""
    parameters = {name: _parameter(block, name[len(prefix) + 1:]) for name in (weights or {})}
    originals = {name: parameter.data for name, parameter in parameters.items()}
    try:
        for name, parameter in parameters.items():
            parameter.data = weights[name].to(parameter.device, parameter.dtype)
        yield
    finally:
        for name, parameter in parameters.items():
            parameter.data = originals[name]


def _parameter(block: nn.Module, relative: str) -> torch.Tensor:
    """A module's weight by the module's name, else a parameter by its own name."""
    try:
        return block.get_submodule(relative).weight
    except AttributeError:
        return block.get_parameter(relative)


class _Captured:
    """Per batch: its tokens (host), and every block's call (on the device or the host)."""

    def __init__(self, store: ActivationStore) -> None:
        self.store = store
        self.tokens: list[BatchTokens] = []
        self.calls: list[list[BlockCall]] = []


def _capture(loaded: LoadedModel, calibration: CalibrationSet, batches: list[list[int]], plan: MemoryPlan,
             blocks: nn.ModuleList, progress: Progress) -> _Captured:
    model, device = loaded.model, loaded.device
    captured = _Captured(ActivationStore(plan.activations, device))
    keep_calls = device if plan.activations is Location.DEVICE else torch.device("cpu")
    source = loaded.weight_source
    parts = outside_blocks(model, blocks)
    for name, module in parts:
        source.onload(module, name, device)
    try:
        for number, rows in enumerate(batches):
            ids, mask = calibration.pad(rows)
            batch = capture_batch(model, blocks, {"input_ids": ids.to(device), "attention_mask": mask.to(device)})
            captured.tokens.append(batch_tokens(rows, mask))
            captured.store.put(number, batch.hidden)
            captured.calls.append(moved(batch.calls, keep_calls))
            progress((number + 1) / len(batches), f"Embeddings of batch {number + 1} of {len(batches)}")
    finally:
        for name, module in parts:
            source.offload(module, name)
    return captured


def _run_block(block: nn.Module, index: int, captured: _Captured, device: torch.device, router: Router | None,
               keep_outputs: bool, batch_count: int) -> None:
    for number in range(batch_count):
        if router is not None:
            router.start_batch(captured.tokens[number].to(device))
        hidden = captured.store.get(number, device)
        try:
            output = moved(captured.calls[number][index], device).run(block, hidden)
        except StopForward:  # the router saw the block's last observed input: its output is not kept
            output = None
        if keep_outputs:
            captured.store.put(number, output)
        if router is not None:
            router.end_batch()


def _group_by_group(block: nn.Module, name: str, index: int, layers: list[LinearLayer], captured: _Captured,
                    device: torch.device, request: PassRequest, batch_count: int
                    ) -> tuple[dict[str, torch.Tensor], dict[str, object], dict[str, str]]:
    """True sequential (GPTQModel's and optimum's default): the block's layers in groups that read one
    input (q/k/v, o, gate/up, down), in the order the forward reaches them; each group observed
    with the groups before it already replaced by ``after_block``'s weights, then finished. Each run
    stops at the group's last input (the first batch finds where: the next group's input). Returns
    the block's replacement weights, what after_block left of every group's accumulators, and the sharing."""
    replacement: dict[str, torch.Tensor] = {}
    accumulators: dict[str, object] = {}
    shared: dict[str, str] = {}
    remaining = list(layers)
    while remaining:
        router = Router(request.factory, share_inputs=request.share_inputs, learn_stop=True, one_group=True)
        with swapped(block, name, replacement), observing(router.points(remaining, (Side.INPUT,))):
            _run_block(block, index, captured, device, router, False, batch_count)
        if not router.accumulators:
            raise CalibscopeError(f"{remaining[0].name} is never called in the block's forward: it cannot be quantized "
                                  "true-sequentially (turn true_sequential off).")
        distributed.all_reduce(router.accumulators)
        remaining = [layer for layer in remaining if layer.name not in router.accumulators and layer.name not in router.shared]
        shared.update(router.shared)
        finished = FinishedBlock(index, router.accumulators, dict(router.shared))
        replacement.update(request.after_block(finished) or {})
        accumulators.update(router.accumulators)
    return replacement, accumulators, shared


def blockwise_pass(loaded: LoadedModel, calibration: CalibrationSet, request: PassRequest, batches: list[list[int]],
                   plan: MemoryPlan, progress: Progress = no_progress) -> PassResult:
    """See the module docstring; returns the accumulators ``after_block`` left, and the sharing."""
    model, device = loaded.model, loaded.device
    blocks, prefix = decoder_blocks(model), block_prefix(model)
    grouped = layers_by_block(request.layers, prefix)
    last = max([*grouped, *(block_of(layer.name) for layer in request.experts)])  # the last block anything is observed in
    results, shared = {}, {}
    source = loaded.weight_source
    with loaded.lock, torch.inference_mode():
        captured = _capture(loaded, calibration, batches, plan, blocks, scaled(progress, 0.0, 0.05))
        try:
            for index in range(last + 1):
                block, name = blocks[index], f"{prefix}.{index}"
                source.onload(block, name, device)
                try:
                    experts = [layer for layer in request.experts if block_of(layer.name) == index]
                    layers = grouped.get(index, [])
                    if request.true_sequential:
                        replacement, accumulators, block_shared = _group_by_group(block, name, index, layers, captured,
                                                                                  device, request, len(batches))
                    else:
                        keep = not request.propagate and index < last
                        # an observing run whose output is not kept stops after the block's last observed input
                        # (learned in the first batch): in a sequential pass it skips e.g. the down projection
                        router = Router(request.factory, share_inputs=request.share_inputs,
                                        experts_factory=request.experts_factory,
                                        learn_stop=bool(layers) and not experts and not keep)
                        with observing(router.points(layers, request.sides, experts)):
                            _run_block(block, index, captured, device, router, keep, len(batches))
                        distributed.all_reduce(router.accumulators)
                        finished = FinishedBlock(index, router.accumulators, dict(router.shared))
                        replacement = request.after_block(finished) if request.after_block else None
                        accumulators, block_shared = router.accumulators, router.shared
                    if request.propagate and index < last:
                        with swapped(block, name, replacement):
                            _run_block(block, index, captured, device, None, True, len(batches))
                    # the block's quantized weights (872 MB in float32 for an 8B block), not held into the next
                    replacement = None
                    results.update(accumulators)
                    shared.update(block_shared)
                finally:
                    source.offload(block, name)
                progress(0.05 + 0.95 * (index + 1) / (last + 1), f"Block {index + 1} of {last + 1} done")
        finally:
            captured.store.close()
    return PassResult(results, shared)
