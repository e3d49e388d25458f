"""collect_imatrix: llama-imatrix's statistics for a calibration set, in one pass of the runner."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import CalibscopeError, SpecError
from engine.hooks import Side, decoder_blocks
from engine.imatrix.accumulator import SquareSumAccumulator
from engine.imatrix.experts import RoutedSquareSums
from engine.imatrix.matrix import Imatrix, ImatrixEntry
from engine.imatrix.names import gguf_weight_names
from engine.models import LinearLayer, LoadedModel
from engine.models.layers import find_experts, find_linear_layers
from engine.progress import Progress, no_progress
from engine.runner import Execution, PassRequest, run_pass
from engine.sampling import CalibrationSet
from engine.specs import choice


@dataclass(frozen=True)
class ImatrixSpec:
    """include_output: also the LM head (``output.weight``), as ``llama-imatrix --process-output``;
    by default only the ``blk.*`` weights, as llama-imatrix."""

    include_output: bool = False
    batch_size: int = 8
    execution: Execution = Execution.AUTO

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise SpecError("batch_size must be at least 1.")
        object.__setattr__(self, "execution", choice(Execution, self.execution, "execution"))


def named_layers(loaded: LoadedModel, include_output: bool = False) -> dict[str, tuple[LinearLayer, tuple[str, ...]]]:
    """Each quantizable layer llama.cpp keeps an imatrix entry for, with its tensor name(s)."""
    model_type = loaded.model.config.model_type
    blocks = len(decoder_blocks(loaded.model))
    found = {}
    for layer in find_linear_layers(loaded.model):
        names = tuple(n for n in gguf_weight_names(layer.name, model_type, blocks)
                      if n.startswith("blk.") or (include_output and n == "output.weight"))
        if names:
            found[layer.name] = (layer, names)
    if not found and not find_experts(loaded.model):
        raise CalibscopeError(f"No layer of this {model_type} model has a llama.cpp tensor name.")
    return found


def _names(module: str, model_type: str, blocks: int) -> tuple[str, ...]:
    return gguf_weight_names(module, model_type, blocks) if module else ()


def expert_entries(accumulator: RoutedSquareSums, model_type: str, blocks: int) -> dict[str, ImatrixEntry]:
    """One MoE block's entries: the experts' gate/up and down tensors (one row per expert, with its
    token count; an expert no token reached keeps count 0, as llama-imatrix records it) and the router."""
    layer, counts = accumulator.layer, accumulator.counts.cpu().numpy()
    entries = {}
    for name in _names(f"{layer.name}.gate_up_proj", model_type, blocks):
        entries[name] = ImatrixEntry(accumulator.inputs.to(torch.float32).cpu().numpy(), counts)
    for name in _names(f"{layer.name}.down_proj", model_type, blocks):
        entries[name] = ImatrixEntry(accumulator.intermediate.to(torch.float32).cpu().numpy(), counts)
    for name in _names(layer.router, model_type, blocks):
        entries[name] = ImatrixEntry(accumulator.router.to(torch.float32).cpu().numpy()[None], np.array([accumulator.tokens]))
    return entries


def collect_imatrix(loaded: LoadedModel, calibration: CalibrationSet, spec: ImatrixSpec = ImatrixSpec(),
                    progress: Progress = no_progress) -> Imatrix:
    """Σx² and token counts of every named layer's input over ``calibration`` (padding excluded);
    per expert for MoE experts modules."""
    layers = named_layers(loaded, spec.include_output)
    experts = tuple(find_experts(loaded.model))

    def factory(channels: int, device: torch.device) -> SquareSumAccumulator:
        return SquareSumAccumulator(channels, device)

    request = PassRequest([layer for layer, _ in layers.values()], (Side.INPUT,), factory,
                          state_bytes=lambda layer: layer.in_features * 8, batch_size=spec.batch_size,
                          execution=spec.execution, experts=experts, experts_factory=RoutedSquareSums)
    result = run_pass(loaded, calibration, request, progress)
    entries = {}
    for module, (_, names) in layers.items():
        accumulator = result.accumulators[result.shared.get(module, module)]
        entry = ImatrixEntry(accumulator.sums.to(torch.float32).cpu().numpy()[None], np.array([accumulator.tokens]))
        entries.update(dict.fromkeys(names, entry))
    model_type, blocks = loaded.model.config.model_type, len(decoder_blocks(loaded.model))
    for layer in experts:
        entries.update(expert_entries(result.accumulators[layer.name], model_type, blocks))
    lengths = calibration.lengths
    chunk_size = int(lengths.max())
    return Imatrix(entries, datasets=[dataset_label(calibration)], chunk_count=int(lengths.sum() // chunk_size),
                   chunk_size=chunk_size, origin="calibscope")


def dataset_label(calibration: CalibrationSet) -> str:
    """What ``imatrix.datasets`` records: the corpus and the recipe (llama-imatrix writes the file name)."""
    manifest = calibration.manifest
    corpus = manifest.corpus.get("label") or "corpus"
    return f"{corpus} ({manifest.strategy}, {manifest.samples} x <= {int(calibration.lengths.max())} tokens, seed {manifest.seed})"
