"""AWQ over a calibration set, block by block (the numerics are engine/quant/methods/awq.py's).

The mappings (which inputs can be rescaled, and which module's output measures it) are found from
the model (engine/quant/methods/mappings.py). One block-by-block pass of the float model, as llm-compressor's
sequential pipeline runs AWQ (its blocks see the float outputs of the blocks before: the rescaling
leaves the float model unchanged, and the weights are rounded only after the search): each block's
quantized layers' inputs are observed (Σ|x| per channel for x̄, Σ xxᵀ for the loss of a Linear
parent, the clip search and each layer's output error), and the calls of its parent modules (the
attention, the MLP) are kept. When the block's batches are done, its mappings are searched in the
order the forward reaches them, each seeing the rescaling of the ones before, then clipped, then
freed. The model itself is never changed: the grid search swaps weights in and puts them back.

The loss of a mapping whose parent is the balance layer itself (up_proj -> down_proj, v_proj ->
o_proj) is the mean squared change of that layer's output, tr(ΔW XᵀX ΔWᵀ) / (tokens · outputs):
from the block's Σ xxᵀ, with no forward (a 20-point search of a 2,048-wide down projection costs
20 products of [640, 2,048] by [2,048, 2,048] instead of 20 of 16,384 tokens). Other parents run
their recorded calls again. Padding counts nowhere (llm-compressor counts it in x̄ and the loss; on
windows without padding the two agree). A parent that works token by token (the MLP: called on one
tensor alone, and checked to give the same outputs on its calls' real tokens put together) runs its
points on those tokens merged into chunks (``chunk_width``): the pass's batches of a few short
sequences make small products (Gemma 3 270M's MLP runs 9% slower per flop on 256 tokens than on 512
on a 2-core CPU, and no faster on more; on a GPU small products are launch-bound), and no padding is
computed. Chunks stay many enough for beaten points to be cut short (bench/awq_search.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import pandas as pd
import torch
from torch import nn

from engine.errors import CalibscopeError
from engine.hooks import Side, block_prefix, decoder_blocks
from engine.memo import OwnerMemo
from engine.models import LinearLayer, LoadedModel, block_of
from engine.progress import Progress, no_progress
from engine.quant.apply import module_weight, original_weights, rescaled
from engine.quant.formats.rtn import rtn_quantized
from engine.quant.measures import output_error
from engine.quant.methods.awq import Losses, best_clips, clipped, group_blocks, search_scales
from engine.quant.methods.mappings import ScalingMapping, linear_mappings, norm_mappings, renormalizing_norms
from engine.quant.methods.scaling import ChannelScaling, divided_hessian, scaled_bias, scaled_norm
from engine.quant.specs import AwqSpec, QuantSpec, WeightSpec
from engine.runner import Execution, FinishedBlock, PassRequest, distributed, fitted, run_pass, swapped
from engine.sampling import CalibrationSet
from engine.stats import HessianAccumulator

RESULTS: OwnerMemo[AwqResult] = OwnerMemo(keep=4)  # per model: a run's AWQ made again for its checkpoint is not searched twice


class InputSums:
    """One observed input's Σ|x| per channel (float64), its real tokens and Σ xxᵀ."""

    def __init__(self, channels: int, device: torch.device) -> None:
        self.absolute = torch.zeros(channels, dtype=torch.float64, device=device)
        self.products = HessianAccumulator(channels, storage=device)

    def update(self, x: torch.Tensor, tokens=None) -> None:
        self.absolute += x.abs().sum(0, dtype=torch.float64)
        self.products.update(x)

    def all_reduce(self, group=None) -> InputSums:
        torch.distributed.all_reduce(self.absolute, torch.distributed.ReduceOp.SUM, group)
        self.products.all_reduce(group)
        return self

    @property
    def tokens(self) -> int:
        return self.products.tokens

    def mean(self) -> torch.Tensor:
        """x̄: mean |x| per channel."""
        return (self.absolute / max(self.tokens, 1)).float()

    def hessian(self) -> torch.Tensor:
        """H = 2/N Σ xxᵀ."""
        return self.products.result()


@dataclass
class AwqResult:
    """The rescaling AWQ chose, one row per mapping (its grid point, the parent's relative output
    error at the identity and at the chosen point) and one per layer (its mapping's ratio, its
    largest s, and the relative output error of the scheme's RTN before and after AWQ)."""

    scaling: ChannelScaling
    mappings: pd.DataFrame
    layers: pd.DataFrame
    losses: dict[str, torch.Tensor]  # source -> each grid point's loss (the parent's mean squared output change; NaN: cut short)
    seconds: float


def awq_mappings(loaded: LoadedModel, layers: list[LinearLayer], spec: AwqSpec) -> list[ScalingMapping]:
    """Every norm and Linear mapping into ``layers``, in the order the forward reaches them; without
    ``spec.renormalized``, those whose readers' outputs a norm inside the measured module reads again
    are left out."""
    mappings = norm_mappings(loaded, layers) + linear_mappings(loaded, layers)
    if not spec.renormalized:
        again = renormalizing_norms(loaded, layers)
        mappings = [mapping for mapping in mappings if not any(
            norm.startswith(mapping.parent + ".") for layer in mapping.layers for norm in again.get(layer, ()))]
    order = {layer.name: number for number, layer in enumerate(layers)}
    return sorted(mappings, key=lambda mapping: order[mapping.layers[0]])


class _ParentCalls:
    """The calls (args, kwargs) of the parent modules a search runs again, batch by batch."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.calls: dict[str, list[tuple[tuple, dict]]] = {name: [] for name in modules}
        self.handles = {name: module.register_forward_pre_hook(self._recorder(name), with_kwargs=True)
                        for name, module in modules.items()}

    def _recorder(self, name: str):
        def record(_module, args, kwargs):
            self.calls[name].append((args, kwargs))
        return record

    def take(self, name: str) -> list[tuple[tuple, dict]]:
        """The module's calls, no longer recorded: its block is done (the search runs them again)."""
        self.handles.pop(name).remove()
        return self.calls.pop(name)

    def close(self) -> None:
        for handle in self.handles.values():
            handle.remove()
        self.handles.clear()
        self.calls.clear()


def _outputs(parent: nn.Module, calls: list[tuple[tuple, dict]]) -> list[torch.Tensor]:
    outputs = []
    for args, kwargs in calls:
        output = parent(*args, **kwargs)
        outputs.append(output[0] if isinstance(output, tuple) else output)
    return outputs


def _squared_error(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Σ over the real tokens (``mask`` [batch, time]; None: every token) of the squared difference, on the device."""
    difference = output.float() - target.float()
    if mask is not None and difference.dim() >= 2 and tuple(difference.shape[:2]) == tuple(mask.shape):
        difference = difference[mask]
    return difference.pow(2).sum()


MERGED_TOKENS, CUT_CHUNKS = 512, 16
# the largest difference, relative to the largest |output|, that merged calls may show and still count as the
# same computation (float rounding of other product shapes; a module that mixes tokens differs by O(1))
MERGE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}
HALF_MERGE_TOLERANCE = 2e-2


def _real_tokens(calls: list[tuple[tuple, dict]], masks: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """Each call's real tokens [n, hidden] when every call is ``parent(x)`` on x [batch, time, hidden]
    alone; None when any call passes more."""
    tokens = []
    for (args, kwargs), mask in zip(calls, masks, strict=True):
        x = args[0] if len(args) == 1 and not kwargs else None
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or tuple(x.shape[:2]) != tuple(mask.shape):
            return None
        tokens.append(x[mask])
    return tokens


def chunk_width(lengths: list[int]) -> int:
    """Tokens per merged chunk, given each recorded call's real tokens: ``MERGED_TOKENS``, fewer where
    the set would then make under ``CUT_CHUNKS`` chunks (a point is cut short only between chunks: one
    large chunk would measure every beaten point in full), never fewer than the largest call's."""
    return max(max(lengths), min(MERGED_TOKENS, -(-sum(lengths) // CUT_CHUNKS)))


def merged_calls(parent: nn.Module, calls: list[tuple[tuple, dict]], targets: list[torch.Tensor],
                 masks: list[torch.Tensor]) -> tuple[list[tuple[tuple, dict]], list[torch.Tensor], list[torch.Tensor | None]]:
    """The calls, their float outputs and masks the search runs: the real tokens of every call in
    chunks of ``chunk_width`` tokens (each chunk one sequence, no padding) where ``parent`` is
    token-wise on them, else the calls as recorded. Token-wise is checked, not assumed: the merged
    chunks' outputs must equal the recorded calls' on their real tokens."""
    tokens = _real_tokens(calls, masks)
    if tokens is None or len(calls) < 2 and bool(masks[0].all()):
        return calls, targets, masks
    width = chunk_width([len(rows) for rows in tokens])
    chunks = torch.cat(tokens).split(width)
    merged = [((chunk.unsqueeze(0),), {}) for chunk in chunks]
    expected = torch.cat([target[mask] for target, mask in zip(targets, masks)]).split(width)
    outputs = [output.squeeze(0) for output in _outputs(parent, merged)]
    if not _same_outputs(outputs, expected):
        return calls, targets, masks
    return merged, [output.unsqueeze(0) for output in outputs], [None] * len(merged)


def _same_outputs(outputs: list[torch.Tensor], expected: list[torch.Tensor]) -> bool:
    """Whether the merged chunks' outputs are the recorded ones, up to the rounding of other product
    shapes (``MERGE_TOLERANCE`` of the largest |output|); one synchronisation."""
    if any(output.shape != target.shape for output, target in zip(outputs, expected)):
        return False
    largest = torch.stack([target.abs().amax().float() for target in expected]).max()
    difference = torch.stack([(output.float() - target.float()).abs().amax() for output, target in zip(outputs, expected)]).max()
    tolerance = MERGE_TOLERANCE.get(expected[0].dtype, HALF_MERGE_TOLERANCE)
    return bool(difference <= tolerance * torch.where(largest > 0, largest, torch.ones_like(largest)))  # all zero: absolute


class _Block:
    """One finished block's AWQ: its mappings searched in order, then its layers clipped and measured."""

    def __init__(self, search: _Search, finished: FinishedBlock) -> None:
        self.search, self.finished = search, finished
        self.layers = [layer for layer in search.layers if block_of(layer.name) == finished.index]
        self.originals = original_weights(search.loaded, self.layers)
        self.block = search.blocks[finished.index]
        self.prefix = f"{search.prefix}.{finished.index}"

    def sums(self, name: str) -> InputSums:
        return self.finished.accumulators[self.finished.shared.get(name, name)]

    def current(self, name: str) -> torch.Tensor:
        """The layer's [out, in] float weight with the rescalings found so far."""
        scaling = self.search.scaling
        return rescaled(self.originals[name], scaling.scales.get(name), scaling.row_scales.get(name))

    def module_weights(self, matrices: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: module_weight(self.search.by_name[name], matrix) for name, matrix in matrices.items()}

    def run(self) -> None:
        for mapping in self.search.mappings_of(self.finished.index):
            self.search_mapping(mapping)
        if self.search.spec.awq.clip:
            self.clip()
        self.measure()

    def losses(self, mapping: ScalingMapping) -> tuple[Losses, float]:
        """The loss of a point (its fakes of the balance layers) and the float output's mean square."""
        search = self.search
        if mapping.parent in search.by_name:  # a Linear parent: from its input's Σ xxᵀ, no forward
            half = self.sums(mapping.parent).hessian() / 2  # Σ xxᵀ / N
            weight = self.current(mapping.parent).float()
            outputs = weight.shape[0]

            def from_products(fakes: list[torch.Tensor], bound: float) -> tuple[torch.Tensor, bool]:
                delta = fakes[0].float() - weight
                return torch.sum((delta @ half) * delta) / outputs, True
            return from_products, float(torch.sum((weight @ half) * weight)) / outputs
        parent = self.block.get_submodule(mapping.parent[len(self.prefix) + 1:])
        calls = search.parent_calls.take(mapping.parent)
        touched = {layer.name: self.current(layer.name) for layer in self.layers
                   if layer.name.startswith(mapping.parent + ".") and search.scaling.touches(layer.name)}
        with swapped(self.block, self.prefix, self.module_weights(touched)):
            targets = _outputs(parent, calls)
            calls, targets, masks = (merged_calls(parent, calls, targets, search.masks) if search.merge_calls
                                     else (calls, targets, search.masks))
        device = search.loaded.device
        elements = distributed_sum(torch.tensor(float(search.real_tokens * targets[0].shape[-1]), device=device))
        zero = torch.zeros((), device=device)
        signal = sum(_squared_error(target, zero, mask) for target, mask in zip(targets, masks))
        signal = float(distributed_sum(signal.reshape(())) / elements)

        cut = distributed.world()[1] == 1 and len(calls) > 1  # data-parallel: every rank must run every point

        def from_forwards(fakes: list[torch.Tensor], bound: float) -> tuple[torch.Tensor, bool]:
            weights = {**touched, **dict(zip(mapping.layers, fakes))}
            error, limit = torch.zeros((), device=device), bound * float(elements)
            with swapped(self.block, self.prefix, self.module_weights(weights)):
                for call, target, mask in zip(calls, targets, masks):
                    error = error + _squared_error(_outputs(parent, [call])[0], target, mask)
                    if cut and limit < float("inf") and float(error) > limit:  # beaten already: the rest cannot help it
                        return error / elements, False
            return distributed_sum(error.reshape(())) / elements, True
        return from_forwards, signal

    def search_mapping(self, mapping: ScalingMapping) -> None:
        search, scaling = self.search, self.search.scaling
        losses, signal = self.losses(mapping)
        matrices = [self.current(name) for name in mapping.layers]
        x_mean = self.sums(mapping.layers[0]).mean()
        scales, best, grid, values = search_scales(x_mean, matrices, search.spec.weights, search.spec.awq.grid,
                                                   search.spec.awq.scaling, losses)
        if best < 0:
            raise CalibscopeError(f"AWQ found no finite output error for {mapping.source} -> {', '.join(mapping.layers)}: "
                                  "the calibration data gives NaN or infinite activations there.")
        scales = scales.cpu()
        for name in mapping.layers:  # a layer reads one input: one mapping sets its s, another may set its rows'
            scaling.scales[name] = scales
        source = search.modules[mapping.source]
        if mapping.is_norm:
            scaling.parameters.update(scaled_norm(mapping.source, source, scales, mapping.gain_offset))
        else:
            scaling.row_scales[mapping.source] = scales
            scaling.parameters.update(scaled_bias(mapping.source, source, scales))
        ratio, duo = grid[best]
        search.losses[mapping.source] = values
        search.mapping_rows.append({
            "source": mapping.source, "layers": ", ".join(mapping.layers), "parent": mapping.parent, "ratio": ratio,
            "duo_scaling": duo, "grid_index": best, "points_cut_short": int(torch.isnan(values).sum()),
            "error_identity": float(values[0]) / signal if signal else float("nan"),
            "error_best": float(values[best]) / signal if signal else float("nan"),
            "scale_max": float(scales.max()), "scale_min": float(scales.min()), "tokens": self.sums(mapping.layers[0]).tokens})
        for name in mapping.layers:
            search.layer_rows[name] = {"awq_ratio": ratio, "awq_scale_max": float(scales.max()),
                                       "awq_error_identity": search.mapping_rows[-1]["error_identity"],
                                       "awq_error_best": search.mapping_rows[-1]["error_best"]}

    def input_hessian(self, name: str) -> torch.Tensor:
        """H of the layer's rescaled input."""
        return divided_hessian(self.sums(name).hessian(), self.search.scaling.scales.get(name))

    def clip(self) -> None:
        spec = self.search.spec.weights
        for layer in self.layers:
            if clipped(layer.name):
                blocks = group_blocks(self.input_hessian(layer.name), spec.group_size)
                self.search.scaling.clips[layer.name] = best_clips(self.current(layer.name), blocks, spec).cpu()

    def measure(self) -> None:
        """Each layer's relative output error under the scheme's RTN, before and after AWQ."""
        spec, scaling = self.search.spec.weights, self.search.scaling
        for layer in self.layers:
            before = _rtn_error(self.originals[layer.name], self.sums(layer.name).hessian(), spec)
            after_weight = rescaled(self.originals[layer.name], scaling.scales.get(layer.name),
                                    scaling.row_scales.get(layer.name), scaling.clips.get(layer.name))
            after = _rtn_error(after_weight, self.input_hessian(layer.name), spec)
            row = self.search.layer_rows.setdefault(layer.name, {})
            row.update(output_error_before_awq=before, output_error_awq=after)
            if layer.name in scaling.clips:
                largest = (self.current(layer.name).float().abs()
                           .reshape(layer.out_features, scaling.clips[layer.name].shape[1], -1))
                row["clipped_groups"] = float((scaling.clips[layer.name].to(largest.device) < largest.amax(-1)).float().mean())


def _rtn_error(matrix: torch.Tensor, hessian: torch.Tensor, spec: WeightSpec) -> float:
    """The relative output error of ``matrix`` rounded to nearest on ``spec``'s grids."""
    weight = matrix.float()
    fake, _ = rtn_quantized(weight, spec.bits, spec.group_size, spec.symmetric)
    return output_error(fake - weight, weight, hessian)


def distributed_sum(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the ranks (itself in one process)."""
    if distributed.world()[1] > 1:
        torch.distributed.all_reduce(value, torch.distributed.ReduceOp.SUM)
    return value


class _Search:
    """What the pass shares across blocks: the mappings, the recorded calls, the rescaling so far."""

    def __init__(self, loaded: LoadedModel, calibration: CalibrationSet, spec: QuantSpec, layers: list[LinearLayer],
                 batches: list[list[int]], merge_calls: bool = True) -> None:
        self.loaded, self.spec, self.layers, self.merge_calls = loaded, spec, layers, merge_calls
        self.by_name = {layer.name: layer for layer in layers}
        self.modules = dict(loaded.model.named_modules())
        self.blocks, self.prefix = decoder_blocks(loaded.model), block_prefix(loaded.model)
        self.mappings = awq_mappings(loaded, layers, spec.awq)
        masks = [calibration.pad(rows)[1] for rows in distributed.shard(batches)]
        self.real_tokens = sum(int(mask.sum()) for mask in masks)  # this rank's, counted on the host
        self.masks = [mask.to(loaded.device, torch.bool) for mask in masks]
        parents = {mapping.parent: self.modules[mapping.parent] for mapping in self.mappings
                   if mapping.parent not in self.by_name}
        self.parent_calls = _ParentCalls(parents)
        self.scaling = ChannelScaling(self.mappings, {}, {})
        self.mapping_rows: list[dict] = []
        self.losses: dict[str, torch.Tensor] = {}
        self.layer_rows: dict[str, dict] = {}

    def mappings_of(self, block: int) -> list[ScalingMapping]:
        return [mapping for mapping in self.mappings if block_of(mapping.layers[0]) == block]

    def after_block(self, finished: FinishedBlock) -> None:
        _Block(self, finished).run()
        finished.accumulators.clear()  # the block's Σ xxᵀ: freed before the next block's


def awq_scaling(loaded: LoadedModel, calibration: CalibrationSet, spec: QuantSpec, layers: list[LinearLayer],
                progress: Progress = no_progress) -> AwqResult:
    """AWQ's rescaling of ``layers`` (the quantized ones) found on ``calibration`` for ``spec``
    (``spec.awq`` set); remembered per model for the same set and scheme."""
    key = (calibration.manifest.token_sha256, spec.awq, spec.weights, tuple(layer.name for layer in layers), distributed.world())
    return RESULTS.get_or_compute(loaded.model, key, lambda: search_awq_scaling(loaded, calibration, spec, layers, progress))


def search_awq_scaling(loaded: LoadedModel, calibration: CalibrationSet, spec: QuantSpec, layers: list[LinearLayer],
                       progress: Progress = no_progress, *, merge_calls: bool = True) -> AwqResult:
    """AWQ's rescaling searched now, never remembered (``awq_scaling`` remembers it). ``merge_calls=False``
    runs a token-wise parent's points on its calls as recorded rather than on their real tokens merged
    (``merged_calls``): the search as it ran before merging (bench/awq_search.py compares the two)."""
    loaded.require_resident("AWQ")
    started = time.perf_counter()
    request = PassRequest(layers, (Side.INPUT,), InputSums, lambda layer: layer.in_features * (layer.in_features * 4 + 8),
                          batch_size=spec.awq.batch_size, batches=calibration.batch_indices(spec.awq.batch_size, by_length=True),
                          execution=Execution.BLOCKWISE)
    request, _ = fitted(loaded, calibration, request)  # the batches the pass runs: the search records those
    search = _Search(loaded, calibration, spec, layers, request.batches, merge_calls)
    if not search.mappings:
        raise CalibscopeError("AWQ found no input it can rescale in these layers (no norm or Linear whose output only "
                              "quantized layers read); leave AWQ off for this model or name pattern.")
    request = replace(request, after_block=search.after_block)
    try:
        run_pass(loaded, calibration, replace(request, propagate=False), progress)
    finally:
        search.parent_calls.close()
    layer_table = pd.DataFrame([{"layer": name, **row} for name, row in search.layer_rows.items()])
    return AwqResult(search.scaling, pd.DataFrame(search.mapping_rows), layer_table, search.losses,
                     time.perf_counter() - started)
