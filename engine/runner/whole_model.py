"""The whole-model runner: every calibration batch through the resident model once, observed tensors
routed to accumulators, the forward stopped after the last observed layer and the LM head skipped
unless it is observed."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.hooks import Side, headless_forward, observing, tap_key
from engine.models import LinearLayer, LoadedModel
from engine.progress import Progress, no_progress
from engine.runner.router import Factory, Router, batch_tokens
from engine.sampling import CalibrationSet

AfterBatch = Callable[[int, dict[str, object]], None]  # (samples done, accumulators)


@dataclass
class PassResult:
    accumulators: dict[str, object]
    shared: dict[str, str]  # layer key -> the key whose accumulator it reuses


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def calibration_pass(loaded: LoadedModel, calibration: CalibrationSet, layers: list[LinearLayer], sides: tuple[Side, ...],
                     factory: Factory, batch_size: int, share_inputs: bool = True,
                     progress: Progress = no_progress, batches: list[list[int]] | None = None,
                     after_batch: AfterBatch | None = None) -> PassResult:
    """Stream ``calibration`` through the model once, feeding each observed tensor's real tokens
    (as [tokens, channels]) to an accumulator made by ``factory``.

    ``batches`` (row indices) replaces the default grouping by length; ``after_batch(samples_done,
    accumulators)`` is called after each batch (snapshots of a sample-count sweep)."""
    head = next((layer.module for layer in layers if layer.is_head), None)
    last = tap_key(layers[-1].name, sides[-1])
    router = Router(factory, stop_after=last if head is None else "", share_inputs=share_inputs)
    if batches is None:
        batches = calibration.batch_indices(batch_size, by_length=True)  # less padding, same results
    done = 0
    device = model_device(loaded.model)
    with loaded.lock, observing(router.points(layers, sides)), torch.inference_mode():
        for number, rows in enumerate(batches):
            ids, mask = calibration.pad(rows)
            router.start_batch(batch_tokens(rows, mask).to(device))
            headless_forward(loaded.model, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, head)
            router.end_batch()
            done += len(rows)
            if after_batch is not None:
                after_batch(done, router.accumulators)
            progress((number + 1) / len(batches), f"Batch {number + 1} of {len(batches)}")
    return PassResult(router.accumulators, router.shared)
