"""SmoothQuant (Xiao et al. 2023): per input channel j of the layers that read one norm's output,
divide the input by s_j and multiply the weights' column j by s_j. The float model computes the
same function, but the activation outliers have moved into the weights, whose per-channel grids
absorb them, so the inputs quantize with less error.

The scales are llm-compressor's (``SmoothQuantModifier``, transcribed):
    s_j = r_j^α / w_j^(1-α),  r_j = max_j - min_j of the input over the calibration set,
    w_j = 2 · max over the layers of max_i |W_ij|   (the 2: r is a range, |W| half of one),
where w_j = 0 gives s_j = r_j, and s ≥ 1e-5. One difference, on purpose: a channel the set never
moved (r_j = 0) while the norm's gain there is not 0 keeps s_j = 1; llm-compressor's 1e-5 there
multiplies the gain by 10^5 for a channel the calibration data never saw. Where the gain is 0 (the
channel is 0 for every input: Gemma 3 has such channels) both take 1e-5, which shrinks the weights'
column that multiplies it, so it no longer sets their rows' scales.

Which layers read which norm is found from the model (one short forward: a layer reads a norm when
its input is that norm's output tensor), not from a list of names: in Gemma 3 the MLP reads
``pre_feedforward_layernorm`` and ``post_attention_layernorm`` normalizes the attention's output
before the residual, which a name list written for Llama gets wrong. The 1/s is folded into the
norm's *effective* gain: Gemma's norms multiply by (1 + weight), Llama's and GPT-2's by weight (found
by probing the norm, not by its class), so the new weight is (offset + weight) / s - offset. A
mapping is kept only when every layer reading the norm is quantized (the LM head reads the final
norm: never smoothed), and the smoothed float model is checked against the original before use."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import CalibscopeError
from engine.models import LinearLayer, LoadedModel
from engine.models.layers import find_linear_layers
from engine.quant.apply import QuantizedModel, quantized, scaled_columns

MINIMUM_SCALE = 1e-5  # llm-compressor's MINIMUM_SMOOTHING_SCALE
FLOAT32_TOLERANCE, HALF_TOLERANCE = 1e-3, 5e-2  # relative logit change the smoothed float model may show
GAIN_OFFSETS = (0.0, 1.0)  # gain = weight (Llama, GPT-2 LayerNorm) or 1 + weight (Gemma)


@dataclass(frozen=True)
class SmoothingMapping:
    """A norm and the layers that read its output; ``gain_offset``: the norm multiplies by
    (gain_offset + weight)."""

    norm: str
    layers: tuple[str, ...]
    gain_offset: float


@dataclass
class Smoothing:
    """What SmoothQuant changes: per smoothed layer, its input's scales s; per norm, its new
    parameters (full parameter name -> tensor)."""

    mappings: list[SmoothingMapping]
    scales: dict[str, torch.Tensor]
    norm_parameters: dict[str, torch.Tensor]

    def matrices(self, matrices: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """[out, in] weights with the smoothed layers' columns multiplied by s (in their own dtype)."""
        return {name: scaled_columns(matrix, self.scales[name]) if name in self.scales else matrix
                for name, matrix in matrices.items()}

    def arrays(self, layer: str, arrays: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """The input statistics of ``layer`` after its input is divided by s, where they follow from the
        per-channel ones exactly (min, max, |max|, per-channel percentiles); histograms of the whole
        tensor do not, and are left out (the spec refuses the methods that read them)."""
        if arrays is None or layer not in self.scales:
            return arrays
        scales = self.scales[layer].to(arrays["absmax"].device)
        divided = {key: arrays[key].float() / scales for key in ("min", "max", "absmax")}
        if "channel_percentiles" in arrays:
            divided["channel_percentiles"] = arrays["channel_percentiles"].float() / scales
        return divided

    def hessians(self, hessians):
        """Hessians of the smoothed inputs: x' = x / s, so H' = diag(1/s) H diag(1/s)."""
        return None if hessians is None else SmoothedHessians(hessians, self.scales)


class SmoothedHessians:
    """A HessianReport seen through the smoothing (only what the quantizers read of it)."""

    def __init__(self, report, scales: dict[str, torch.Tensor]) -> None:
        self.report, self.scales, self.shared_with = report, scales, report.shared_with

    def has(self, layer: str) -> bool:
        return self.report.has(layer)

    def hessian(self, layer: str) -> torch.Tensor:
        hessian = self.report.hessian(layer)
        if layer not in self.scales:
            return hessian
        inverse = 1.0 / self.scales[layer].to(device=hessian.device, dtype=hessian.dtype)
        return hessian * inverse[:, None] * inverse[None, :]


def smoothing_scales(low: torch.Tensor, high: torch.Tensor, matrices: list[torch.Tensor], alpha: float,
                     dead: torch.Tensor | None = None) -> torch.Tensor:
    """s per input channel from the input's per-channel min and max and the [out, in] weights that read
    it; ``dead``: the channels the norm's gain makes 0 whatever its input."""
    activation = torch.nan_to_num((high.float() - low.float()).clamp(min=0), nan=0.0, posinf=0.0)
    weight = 2.0 * torch.stack([matrix.float().abs().amax(dim=0).to(activation.device) for matrix in matrices]).amax(dim=0)
    scales = activation.pow(alpha) / weight.pow(1 - alpha)
    scales = torch.where(weight > 0, scales, activation)
    unseen = activation == 0 if dead is None else (activation == 0) & ~dead.to(activation.device)
    scales = torch.where(unseen, torch.ones_like(scales), scales)  # never moved, yet it could: left as it is
    return scales.clamp(min=MINIMUM_SCALE)


def smoothing_mappings(loaded: LoadedModel, layers: list[LinearLayer]) -> list[SmoothingMapping]:
    """The norms whose output only quantized layers of ``layers`` read, with those layers."""
    model = loaded.model
    everything = {layer.module: layer.name for layer in find_linear_layers(model, execution_order=False)}
    norms = {module: name for name, module in model.named_modules() if _is_norm(module)}
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    readers: dict[str, list[str]] = {}

    def after_norm(module, _args, output):
        if isinstance(output, torch.Tensor):
            produced[id(output)] = (norms[module], output)  # the tensor is kept: its id stays its own

    def before_layer(module, args):
        found = produced.get(id(args[0])) if args else None
        if found is not None and found[1] is args[0] and everything[module] not in readers.setdefault(found[0], []):
            readers[found[0]].append(everything[module])

    handles = [module.register_forward_hook(after_norm) for module in norms]
    handles += [module.register_forward_pre_hook(before_layer) for module in everything]
    try:
        with loaded.lock, torch.inference_mode():
            model(input_ids=_probe_tokens(loaded))
    finally:
        for handle in handles:
            handle.remove()
    quantized = {layer.name for layer in layers}
    modules = dict(model.named_modules())
    mappings = []
    for norm, names in readers.items():
        if not set(names) <= quantized:
            continue
        offset = gain_offset(modules[norm], loaded)
        if offset is None:
            raise CalibscopeError(f"SmoothQuant cannot fold its scales into {norm}: its output is neither weight × "
                                  "normalized input nor (1 + weight) × normalized input. Leave SmoothQuant off for this model.")
        mappings.append(SmoothingMapping(norm, tuple(names), offset))
    return mappings


def gain_offset(norm: torch.nn.Module, loaded: LoadedModel) -> float | None:
    """c where the norm computes (c + weight) · n(x) + bias: its output at weight 0 is c · n(x) + bias,
    and the difference of the outputs at weight 1 and 0 is n(x)."""
    width = norm.weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(4, width, generator=generator).to(device=norm.weight.device, dtype=norm.weight.dtype)
    original = norm.weight.data
    with loaded.lock, torch.inference_mode():
        try:
            norm.weight.data = torch.zeros_like(original)
            at_zero = norm(probe).float()
            norm.weight.data = torch.ones_like(original)
            at_one = norm(probe).float()
        finally:
            norm.weight.data = original
    bias = getattr(norm, "bias", None)
    normalized = at_one - at_zero
    centred = at_zero - (bias.float() if isinstance(bias, torch.Tensor) else 0.0)
    offset = float((centred * normalized).sum() / normalized.pow(2).sum().clamp(min=1e-30))
    return next((candidate for candidate in GAIN_OFFSETS if abs(offset - candidate) < 1e-2), None)


def smooth(loaded: LoadedModel, layers: list[LinearLayer], matrices: dict[str, torch.Tensor], arrays_of,
           alpha: float) -> Smoothing:
    """SmoothQuant's scales for ``layers`` (their [out, in] ``matrices``), from ``arrays_of(layer name)``:
    the per-channel statistics of that layer's input (None: not collected)."""
    mappings = smoothing_mappings(loaded, layers)
    if not mappings:
        raise CalibscopeError("SmoothQuant found no norm whose output only quantized layers read, so there is nothing to "
                              "smooth; leave SmoothQuant off for this model or name pattern.")
    modules = dict(loaded.model.named_modules())
    scales, parameters = {}, {}
    for mapping in mappings:
        arrays = arrays_of(mapping.layers[0])
        if arrays is None:
            raise CalibscopeError(f"SmoothQuant needs the per-channel range of {mapping.layers[0]}'s input: collect "
                                  "statistics of layer inputs first.")
        norm = modules[mapping.norm]
        dead = norm.weight.detach().float() + mapping.gain_offset == 0
        found = smoothing_scales(arrays["min"], arrays["max"], [matrices[name] for name in mapping.layers], alpha, dead)
        for name in mapping.layers:
            scales[name] = found
        parameters.update(smoothed_norm(mapping.norm, norm, found, mapping.gain_offset))
    smoothing = Smoothing(mappings, scales, parameters)
    change = float_change(loaded, smoothing)
    tolerance = FLOAT32_TOLERANCE if loaded.model.dtype == torch.float32 else HALF_TOLERANCE
    if not change <= tolerance:
        raise CalibscopeError(f"SmoothQuant changed this model's float output by {change:.2%} (at most {tolerance:.1%} is "
                              "rounding), so a smoothed norm's output is also read by something else than the layers "
                              "it was balanced against; leave SmoothQuant off for this model.")
    return smoothing


def float_change(loaded: LoadedModel, smoothing: Smoothing) -> float:
    """‖logits(smoothed) - logits‖ / ‖logits‖ of the float model on a short probe: 0 up to rounding
    when the smoothing is an identity of the model, as it must be."""
    tokens = _probe_tokens(loaded)
    with loaded.lock, torch.inference_mode():
        before = loaded.model(input_ids=tokens).logits.float()
        with quantized(loaded, QuantizedModel(floats=smoothing.norm_parameters, column_scales=smoothing.scales)):
            after = loaded.model(input_ids=tokens).logits.float()
    return float((after - before).norm() / before.norm().clamp(min=1e-30))


def smoothed_norm(name: str, norm: torch.nn.Module, scales: torch.Tensor, offset: float) -> dict[str, torch.Tensor]:
    """The norm's parameters with its output divided by ``scales``: gain (offset + w) / s, bias b / s."""
    weight = norm.weight.detach()
    scales = scales.to(weight.device)
    found = {f"{name}.weight": ((weight.float() + offset) / scales - offset).to(weight.dtype)}
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        found[f"{name}.bias"] = (bias.detach().float() / scales).to(bias.dtype)
    return found


def _is_norm(module: torch.nn.Module) -> bool:
    """A leaf module with a 1-D gain: LayerNorm, RMSNorm and their variants."""
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.nn.Parameter) and weight.dim() == 1 and not any(True for _ in module.children())


def _probe_tokens(loaded: LoadedModel) -> torch.Tensor:
    vocabulary = int(getattr(loaded.model.config, "vocab_size", 256) or 256)
    return (torch.arange(8, device=loaded.device) % vocabulary).view(1, -1)
