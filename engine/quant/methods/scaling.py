"""Equivalent per-channel rescalings of the float model (SmoothQuant, AWQ): an input x of some layers
is divided by s, channel by channel, where it is made (a norm's gain, or the output rows and bias of
the Linear that computes it), and the readers' weight columns are multiplied by s. The float model
computes the same function; what changes is how the weights and inputs quantize.

A ChannelScaling holds what such a rescaling changes, per layer: its input's s (columns × s), its
output's r (the last len(r) rows and bias entries ÷ r: a fused q/k/v's v rows feed o_proj), AWQ's
per-group weight clips, and the float parameters that change with them (norm gains, biases: full
parameter name -> tensor). ``matrices``, ``hessians`` and ``arrays`` give the quantizers the
rescaled weights, the Hessians of the rescaled inputs and the rescaled input statistics."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.models import LoadedModel
from engine.quant.apply import QuantizedModel, quantized, rescaled
from engine.quant.methods.mappings import ScalingMapping, probe_tokens


@dataclass
class ChannelScaling:
    mappings: list[ScalingMapping]
    scales: dict[str, torch.Tensor]  # layer -> s of its input (its weight's columns × s)
    parameters: dict[str, torch.Tensor]  # full parameter name -> the norm's gain or the bias after the rescaling
    row_scales: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> r (its last len(r) output rows ÷ r)
    clips: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> [out, groups] largest |w| kept (AWQ)

    def touches(self, name: str) -> bool:
        return name in self.scales or name in self.row_scales or name in self.clips

    def matrices(self, matrices: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """[out, in] weights rescaled (and clipped), each in its own dtype, as the float model holds them."""
        return {name: rescaled(matrix, self.scales.get(name), self.row_scales.get(name), self.clips.get(name))
                if self.touches(name) else matrix for name, matrix in matrices.items()}

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
        """Hessians of the rescaled inputs: x' = x / s, so H' = diag(1/s) H diag(1/s)."""
        return None if hessians is None else ScaledHessians(hessians, self.scales)

    def plan(self) -> QuantizedModel:
        """The float model rescaled: what a plan carries besides its quantized weights."""
        return QuantizedModel(floats=self.parameters, column_scales=self.scales, row_scales=self.row_scales)


class ScaledHessians:
    """A HessianReport seen through a rescaling (only what the quantizers read of it)."""

    def __init__(self, report, scales: dict[str, torch.Tensor]) -> None:
        self.report, self.scales, self.shared_with = report, scales, report.shared_with

    def has(self, layer: str) -> bool:
        return self.report.has(layer)

    def hessian(self, layer: str) -> torch.Tensor:
        return divided_hessian(self.report.hessian(layer), self.scales.get(layer))


def divided_hessian(hessian: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """diag(1/s) H diag(1/s): the Hessian of x / s."""
    if scales is None:
        return hessian
    inverse = 1.0 / scales.to(device=hessian.device, dtype=hessian.dtype)
    return hessian * inverse[:, None] * inverse[None, :]


def float_change(loaded: LoadedModel, scaling: ChannelScaling) -> float:
    """‖logits(rescaled) - logits‖ / ‖logits‖ of the float model on a short probe: 0 up to rounding
    when the rescaling is an identity of the model, as it must be."""
    tokens = probe_tokens(loaded)
    with loaded.lock, torch.inference_mode():
        before = loaded.model(input_ids=tokens).logits.float()
        with quantized(loaded, scaling.plan()):
            after = loaded.model(input_ids=tokens).logits.float()
    return float((after - before).norm() / before.norm().clamp(min=1e-30))


def scaled_norm(name: str, norm: torch.nn.Module, scales: torch.Tensor, offset: float) -> dict[str, torch.Tensor]:
    """The norm's parameters with its output divided by ``scales``: gain (offset + w) / s, bias b / s."""
    weight = norm.weight.detach()
    scales = scales.to(weight.device)
    found = {f"{name}.weight": ((weight.float() + offset) / scales - offset).to(weight.dtype)}
    bias = getattr(norm, "bias", None)
    if isinstance(bias, torch.Tensor):
        found[f"{name}.bias"] = (bias.detach().float() / scales).to(bias.dtype)
    return found


def scaled_bias(name: str, module: torch.nn.Module, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """A Linear's bias with its last len(s) entries divided by s (its output rows are), when it has one."""
    bias = getattr(module, "bias", None)
    if not isinstance(bias, torch.Tensor):
        return {}
    divided = bias.detach().float().clone()
    divided[-scales.numel():] /= scales.to(divided.device)
    return {f"{name}.bias": divided.to(bias.dtype)}
