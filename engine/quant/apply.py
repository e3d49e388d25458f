"""Quantized weights and activation grids for a model's layers, and the context manager that puts
them in the model for a while and always puts the original weights back."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.errors import CalibscopeError
from engine.hooks import tapping_kv
from engine.models import LayerKind, LinearLayer, LoadedModel, find_linear_layers
from engine.quant.formats.floats import FloatWeight
from engine.quant.formats.grid import IntWeight
from engine.quant.formats.hadamard import InputRotation
from engine.quant.formats.kv import KVScales
from engine.runner import model_device

if TYPE_CHECKING:
    from engine.quant.activations.inputs import InputQuantizer


def weight_matrix(layer: LinearLayer) -> torch.Tensor | None:
    """The layer's weight as [out, in] (the layout GPTQ's Hessian indexes), or None for a
    convolution whose kernel is wider than 1 (its Hessian would be over unfolded patches)."""
    weight = layer.module.weight.detach()
    if layer.kind is LayerKind.CONV1D_TRANSPOSED:
        return weight.T
    if layer.kind.channels_first:
        if any(k != 1 for k in weight.shape[2:]) or weight.shape[1] != layer.in_features:
            return None
        return weight.reshape(weight.shape[0], weight.shape[1])
    return weight


def original_weights(loaded: LoadedModel, layers: list[LinearLayer]) -> dict[str, torch.Tensor]:
    """Each layer's own [out, in] weight (no copy), read under the model's lock.

    Another session's ``quantized()`` swaps fake-quantized tensors into the shared model while it
    holds the lock, and puts the originals back before it lets go; no pass writes into a weight in
    place. So the tensors read here, under the lock, are the float originals, and stay so after."""
    with loaded.lock:
        return {layer.name: matrix for layer in layers if (matrix := weight_matrix(layer)) is not None}


def module_weight(layer: LinearLayer, matrix: torch.Tensor) -> torch.Tensor:
    """``matrix`` [out, in] back in the module's own layout, dtype and device."""
    weight = layer.module.weight
    shaped = matrix.T if layer.kind is LayerKind.CONV1D_TRANSPOSED else matrix.reshape(weight.shape)
    return shaped.to(device=weight.device, dtype=weight.dtype).contiguous()


@dataclass
class QuantizedModel:
    """What to swap in: module name -> weight in the module's layout; module name -> input grid;
    and module name -> the same weight as the integers and grids a checkpoint stores (``integers``:
    absent for weights made elsewhere, e.g. read back from a peer tool's file).

    A rescaled plan (SmoothQuant, AWQ: engine/quant/methods/scaling.py) also changes the float model:
    ``floats`` holds the new norm gains and biases (full parameter name -> tensor), ``column_scales``
    each rescaled layer's input s and ``row_scales`` the r its output rows are divided by; a rescaled
    layer without a quantized weight runs with its float weight rescaled so. ``experts``: MoE experts
    modules' fused weights (``…experts.gate_up_proj`` [E, 2I, H], ``…experts.down_proj``) quantized,
    and ``expert_integers`` each expert's part (gate_up, down) as a checkpoint stores it.
    ``kv_cache``: each attention module's FP8 cache scales (its keys and values rounded as cached).
    ``rotations``: the layers whose input is rotated at inference (x -> x R, before it is quantized);
    their weights in ``weights`` are rotated too (W R), quantized or not (engine/quant/methods/rotation.py).
    Fused rotations (engine/quant/methods/fused_rotation.py) put the turned model's every changed
    parameter in ``floats`` (embeddings, norms, the LM head, float layers); a tied LM head given its
    own value there is untied while the plan is in the model."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: dict[str, InputQuantizer] = field(default_factory=dict)
    integers: dict[str, IntWeight | FloatWeight] = field(default_factory=dict)
    floats: dict[str, torch.Tensor] = field(default_factory=dict)
    column_scales: dict[str, torch.Tensor] = field(default_factory=dict)
    row_scales: dict[str, torch.Tensor] = field(default_factory=dict)
    experts: dict[str, torch.Tensor] = field(default_factory=dict)  # full parameter name -> an experts module's fake weights
    expert_integers: dict[str, IntWeight | FloatWeight] = field(default_factory=dict)  # "{module}.{expert}.{part}" -> integers
    kv_cache: dict[str, KVScales] = field(default_factory=dict)
    rotations: dict[str, InputRotation] = field(default_factory=dict)

    def add(self, layer: LinearLayer, fake: torch.Tensor, integers: IntWeight | FloatWeight) -> None:
        """A layer's fake-quantized [out, in] weight and its integers."""
        self.weights[layer.name] = module_weight(layer, fake)
        self.integers[layer.name] = integers

    def add_experts(self, layer, done) -> None:
        """An experts module quantized (``ExpertsLayer``, ``engine.quant.methods.experts.ExpertsQuantization``):
        its fused fake weights in the module's own layout and each expert's integers."""
        self.experts[f"{layer.name}.gate_up_proj"] = layer.stored(done.gate_up)
        self.experts[f"{layer.name}.down_proj"] = layer.stored(done.down)
        self.expert_integers.update(done.integers)

    def drop(self, names: list[str]) -> None:
        for name in names:
            self.weights.pop(name, None)
            self.integers.pop(name, None)
            self.rotations.pop(name, None)  # a rotated input needs its rotated weight

    def only(self, names: set[str]) -> QuantizedModel:
        """The same quantization restricted to some layers (per-layer sensitivity): a smoothed model
        stays smoothed, so only the named layers differ from its float model."""
        return QuantizedModel({k: v for k, v in self.weights.items() if k in names},
                              {k: v for k, v in self.inputs.items() if k in names},
                              {k: v for k, v in self.integers.items() if k in names}, self.floats, self.column_scales,
                              self.row_scales, rotations={k: v for k, v in self.rotations.items() if k in names})

    @property
    def rescaled(self) -> set[str]:
        """The layers whose float weight a rescaling changed."""
        return set(self.column_scales) | set(self.row_scales)


def fitted_parameters(modules: dict[str, torch.nn.Module], values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plan's tensors (full parameter name -> tensor: weights, smoothed norms) checked against the
    model's modules: a missing module or another shape is refused naming the layer; another dtype or
    device (a plan made in float32 elsewhere, e.g. by a peer tool, for a bfloat16 model) is cast to
    the module's, as the model would compute with it."""
    fitted = {}
    for name, value in values.items():
        owner, attribute = name.rsplit(".", 1)
        current = getattr(modules.get(owner), attribute, None)
        if current is None:
            raise CalibscopeError(f"The model has no layer {owner!r} with a {attribute}; was the plan made for another model?")
        if tuple(value.shape) != tuple(current.shape):
            raise CalibscopeError(f"The plan's {attribute} for {owner} has shape {tuple(value.shape)}, the model's "
                                  f"{tuple(current.shape)}; was the plan made for another model?")
        fitted[name] = value.to(device=current.device, dtype=current.dtype)
    return fitted


@contextmanager
def quantized(loaded: LoadedModel, plan: QuantizedModel) -> Iterator[None]:
    """Run the model with ``plan``'s weights and fake-quantized inputs inside the block.

    The original weight tensors are kept (not copied) and put back in ``finally``, and every hook is
    removed, so an exception or a cancelled run leaves the cached model exactly as it was. The
    model's lock is held throughout: no other session's pass sees the quantized model.
    """
    loaded.require_resident("Quantized evaluation")
    modules = dict(loaded.model.named_modules())
    missing = (set(plan.inputs) | set(plan.kv_cache) | set(plan.rotations)) - set(modules)
    if missing:
        raise CalibscopeError(f"The model has no module {min(missing)!r}; was the plan made for another model?")
    with loaded.lock:
        weights = {**smoothed_float_weights(loaded, plan), **plan.weights}
        parameters = fitted_parameters(modules, {**plan.floats, **plan.experts,
                                                 **{f"{name}.weight": w for name, w in weights.items()}})
        originals: dict[str, torch.Tensor] = {}
        untied: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
        handles = []
        try:
            swapped: set[int] = set()
            for name, value in parameters.items():
                parameter = loaded.model.get_parameter(name)
                if id(parameter) in swapped:  # tied to a parameter the plan already changed (an LM head turned
                    owner, attribute = name.rsplit(".", 1)  # apart from its embeddings): untied for the block
                    untied.append((loaded.model.get_submodule(owner), attribute, parameter))
                    setattr(untied[-1][0], attribute, torch.nn.Parameter(value, requires_grad=False))
                    continue
                swapped.add(id(parameter))
                originals[name] = parameter.data
                parameter.data = value
            shared = _SharedRotation()  # first: the input is rotated, then quantized
            for name, rotation in plan.rotations.items():
                handles.append(modules[name].register_forward_pre_hook(shared.hook(rotation)))
            for name, grid in plan.inputs.items():
                device = modules[name].weight.device
                handles.append(modules[name].register_forward_pre_hook(_input_quantizer(grid.to(device))))
            caches = {modules[name]: scales.to(model_device(modules[name])).tap for name, scales in plan.kv_cache.items()}
            with tapping_kv(caches):
                yield
        finally:
            for handle in handles:
                handle.remove()
            for module, attribute, parameter in reversed(untied):
                setattr(module, attribute, parameter)
            for name, value in originals.items():
                loaded.model.get_parameter(name).data = value


def smoothed_float_weights(loaded: LoadedModel, plan: QuantizedModel) -> dict[str, torch.Tensor]:
    """The rescaled layers without a quantized weight: their float weight rescaled."""
    wanted = plan.rescaled - set(plan.weights)
    if not wanted:
        return {}
    layers = {layer.name: layer for layer in find_linear_layers(loaded.model, execution_order=False) if layer.name in wanted}
    return {name: module_weight(layers[name], rescaled(weight_matrix(layers[name]), plan.column_scales.get(name),
                                                       plan.row_scales.get(name))) for name in wanted}


def rescaled(matrix: torch.Tensor, columns: torch.Tensor | None = None, rows: torch.Tensor | None = None,
             clips: torch.Tensor | None = None) -> torch.Tensor:
    """[out, in] ``matrix`` with column j times columns[j], then its last len(rows) rows divided by rows,
    then each group of input columns clamped to ±clips[row, group] ([out, groups], the groups of the
    weight's grids: in / groups columns each, rounded up, the last one taking what is left). Each step
    is stored in the matrix's dtype, as llm-compressor updates the parameter mapping by mapping."""
    result = matrix
    if columns is not None:
        result = (result.float() * columns.to(result.device).view(1, -1)).to(matrix.dtype)
    if rows is not None:
        result = result.clone()
        result[-rows.numel():] = (result[-rows.numel():].float() / rows.to(result.device).view(-1, 1)).to(matrix.dtype)
    if clips is not None:
        width = -(-result.shape[1] // clips.shape[1])
        limit = clips.to(result.device).float().repeat_interleave(width, dim=1)[:, :result.shape[1]]
        result = torch.maximum(torch.minimum(result.float(), limit), -limit).to(matrix.dtype)
    return result


class _SharedRotation:
    """Layers that read one input tensor (q/k/v, gate/up) get one rotated tensor: it is rotated once,
    as vLLM rotates a fused layer's input, and the passes still see that they share it."""

    def __init__(self) -> None:
        self.last: tuple | None = None  # (input, rotation, rotated input)

    def hook(self, rotation: InputRotation):
        def rotate(_module, args):
            x = args[0]
            if self.last is None or self.last[0] is not x or self.last[1] is not rotation:
                self.last = (x, rotation, rotation.rotate(x))
            return (self.last[2], *args[1:])

        return rotate


def _input_quantizer(grid: InputQuantizer):
    def hook(_module, args):
        x = args[0]
        return (grid.fake_quantize(x.float()).to(x.dtype), *args[1:])

    return hook
