"""How a layer's input is quantized at inference, simulated: the integer grid of a static range, an
FP8 static scale, a scale per token found at inference (dynamic int or FP8), NVFP4 (a scale per block
of 16 found at inference under a calibrated global scale) or MXFP4 (a power-of-two scale per block
of 32 found at inference).

Inputs are quantized in float32, as vLLM's kernels quantize them (x / scale in float32, then
rounded): compressed-tensors' own forward, in transformers, divides in the model's dtype, and is
followed where it is the runtime (dynamic int inputs at widths vLLM has no kernel for). What is
calibrated is made from the statistics in the model's dtype (a bf16 checkpoint stores bf16 input
scales; NVFP4's global scale is 448 · 6 / absmax computed in bf16, as llm-compressor computes it).
A maximum of 0, NaN or missing calibrates nothing: the layer is named and nothing is written for it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.errors import CalibscopeError
from engine.quant.activations.ranges import activation_clip, activation_grid
from engine.quant.formats.floats import (
    FP4_MAX,
    MXFP4_BLOCK,
    NVFP4_BLOCK,
    NumberFormat,
    blocks,
    fp8_scale,
    global_scale,
    mx_exponents,
    mx_scales,
    nvfp4_block_scales,
    round_fp4,
    round_fp8,
)
from engine.quant.formats.grid import Grid, rounds_scales
from engine.quant.specs import ActivationSpec, Granularity


@dataclass
class Fp8Inputs:
    """FP8 static per tensor: x / scale rounded to e4m3, times scale (``scale`` [1], the calibrated absmax / 448)."""

    scale: torch.Tensor

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        return round_fp8(x / self.scale) * self.scale

    def to(self, device: torch.device) -> Fp8Inputs:
        return Fp8Inputs(self.scale.to(device))

    @property
    def clip(self) -> float:
        return float(self.scale) * 448.0


@dataclass
class TokenInputs:
    """A scale per token from its own |max|, as the runtime that serves the checkpoint finds it: FP8
    absmax / 448 and int8 absmax / 127, in float32 (vLLM's kernels); int at other widths, which vLLM
    has no kernel for and compressed-tensors' own forward runs in transformers, as that forward
    computes it: absmax / ((2^b - 1) / 2) (7.5 at 4 bits: a token's largest value rounds to 8 and
    clips to 7, for a finer step), the scale, x / scale and the result in ``dtype``, the model's."""

    format: NumberFormat
    bits: int
    dtype: torch.dtype = torch.float32

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.format is NumberFormat.FP8:
            scale = fp8_scale(x.abs().amax(-1, keepdim=True))
            return round_fp8(x / scale) * scale
        top = 2 ** (self.bits - 1) - 1
        if self.in_compressed_tensors:
            values, half_range = x.to(self.dtype), (2**self.bits - 1) / 2
        else:  # vLLM's int8 kernel, in float32
            values, half_range = x, top
        maximum = values.abs().amax(-1, keepdim=True)
        scale = torch.where(maximum == 0, 1.0, maximum / half_range)
        return (torch.clamp(torch.round(values / scale), -top - 1, top) * scale).to(x.dtype)

    def to(self, device: torch.device) -> TokenInputs:
        return self

    @property
    def in_compressed_tensors(self) -> bool:
        """Whether compressed-tensors' forward is the runtime of these inputs (vLLM has no kernel)."""
        return self.format is NumberFormat.INT and self.bits != 8

    clip = None


@dataclass
class Nvfp4Inputs:
    """NVFP4: each block of 16 consecutive channels of a token gets the e4m3 scale global · (block
    |max| / 6) at inference; ``global_scale`` [1] is what calibration sets (448 · 6 / the calibrated
    absmax). A block whose |max| exceeds that absmax has its scale clamped at 448: its values clip."""

    global_scale: torch.Tensor

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        grouped = blocks(x, NVFP4_BLOCK)
        local = nvfp4_block_scales(grouped.abs().amax(-1), self.global_scale)
        scale = (local / self.global_scale)[..., None]
        return (round_fp4(torch.clamp(grouped / scale, -FP4_MAX, FP4_MAX)) * scale).flatten(-2)

    def to(self, device: torch.device) -> Nvfp4Inputs:
        return Nvfp4Inputs(self.global_scale.to(device))

    @property
    def clip(self) -> float:
        return 448.0 * FP4_MAX / float(self.global_scale)


@dataclass
class Mxfp4Inputs:
    """MXFP4: each block of 32 gets the power-of-two scale of its |max| at inference (nothing calibrated)."""

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        grouped = blocks(x, MXFP4_BLOCK)
        scale = mx_scales(mx_exponents(grouped.abs().amax(-1)))[..., None]
        return (round_fp4(torch.clamp(grouped / scale, -FP4_MAX, FP4_MAX)) * scale).flatten(-2)

    def to(self, device: torch.device) -> Mxfp4Inputs:
        return self

    clip = None


InputQuantizer = Grid | Fp8Inputs | TokenInputs | Nvfp4Inputs | Mxfp4Inputs


def _calibrated_maximum(name: str, arrays: dict[str, torch.Tensor], spec: ActivationSpec,
                        collected: tuple[float, ...], dtype: torch.dtype) -> torch.Tensor:
    """The range ``spec`` calibrates, in the model's dtype; refused when it is 0, NaN or infinite."""
    clip = activation_clip(arrays, spec, collected)
    value = float(clip.max()) if clip.numel() else float("nan")
    if not math.isfinite(value) or value <= 0:
        raise CalibscopeError(f"{name}: its calibrated input maximum is {value:g} (the set never reached it with a "
                              "non-zero finite value), so no scale can be set; exclude the layer (name pattern) or "
                              "calibrate on data that reaches it.")
    return clip.to(dtype) if rounds_scales(dtype) else clip.float()


def input_quantizer(name: str, arrays: dict[str, torch.Tensor] | None, spec: ActivationSpec,
                    collected: tuple[float, ...], dtype: torch.dtype, width: int) -> InputQuantizer:
    """How ``name``'s input (``width`` channels) is quantized, from its statistics ``arrays`` (None: a
    dynamic scheme needs none)."""
    fmt = spec.format
    if fmt.block and width % fmt.block:
        raise CalibscopeError(f"{name} reads {width} channels, which do not split into {fmt.value}'s blocks of "
                              f"{fmt.block}; exclude it (name pattern) or use another format.")
    if fmt is NumberFormat.MXFP4:
        return Mxfp4Inputs()
    if spec.dynamic:
        return TokenInputs(fmt, spec.bits, dtype)
    if arrays is None:
        raise CalibscopeError(f"No activation statistics for {name}: collect statistics of layer inputs for every layer "
                              "you quantize.")
    if fmt is NumberFormat.INT:
        grid = activation_grid(arrays, spec, collected)
        return Grid(grid.scale.to(dtype).float(), grid.zero, grid.maxq) if rounds_scales(dtype) else grid
    maximum = _calibrated_maximum(name, arrays, spec, collected, dtype)
    if fmt is NumberFormat.FP8:
        return Fp8Inputs(fp8_scale(maximum).float().reshape(1))
    if spec.granularity is not Granularity.TENSOR:
        raise CalibscopeError("NVFP4 inputs have one calibrated global scale per tensor.")
    return Nvfp4Inputs(global_scale(maximum))
