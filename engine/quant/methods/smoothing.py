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

Which layers read which norm is found from the model (engine/quant/methods/mappings.py), not from a list of
names: in Gemma 3 the MLP reads ``pre_feedforward_layernorm`` and ``post_attention_layernorm``
normalizes the attention's output before the residual, which a name list written for Llama gets
wrong. The 1/s is folded into the norm's *effective* gain: Gemma's norms multiply by (1 + weight),
so the new weight is (offset + weight) / s - offset. A mapping is kept only when every layer reading
the norm is quantized (the LM head reads the final norm: never smoothed), and the smoothed float
model is checked against the original before use."""
from __future__ import annotations

import torch

from engine.errors import CalibscopeError
from engine.models import LinearLayer, LoadedModel
from engine.quant.methods.mappings import norm_mappings, tolerance
from engine.quant.methods.scaling import ChannelScaling, float_change, scaled_norm

MINIMUM_SCALE = 1e-5  # llm-compressor's MINIMUM_SMOOTHING_SCALE


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


def smooth(loaded: LoadedModel, layers: list[LinearLayer], matrices: dict[str, torch.Tensor], arrays_of,
           alpha: float) -> ChannelScaling:
    """SmoothQuant's scales for ``layers`` (their [out, in] ``matrices``), from ``arrays_of(layer name)``:
    the per-channel statistics of that layer's input (None: not collected)."""
    mappings = norm_mappings(loaded, layers)
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
        norm = modules[mapping.source]
        dead = norm.weight.detach().float() + mapping.gain_offset == 0
        found = smoothing_scales(arrays["min"], arrays["max"], [matrices[name] for name in mapping.layers], alpha, dead)
        for name in mapping.layers:
            scales[name] = found
        parameters.update(scaled_norm(mapping.source, norm, found, mapping.gain_offset))
    smoothing = ChannelScaling(mappings, scales, parameters)
    change, limit = float_change(loaded, smoothing), tolerance(loaded)
    if not change <= limit:
        raise CalibscopeError(f"SmoothQuant changed this model's float output by {change:.2%} (at most {limit:.1%} is "
                              "rounding), so a smoothed norm's output is also read by something else than the layers "
                              "it was balanced against; leave SmoothQuant off for this model.")
    return smoothing
