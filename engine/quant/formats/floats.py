"""Floating-point formats of weights and activations, rounded as compressed-tensors rounds them.

- FP8 (e4m3: max 448): one scale per tensor, output channel or token, scale = absmax / 448.
- NVFP4: e2m1 elements (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6), an FP8 e4m3 scale per 16 values and a
  float32 global scale per tensor, 448 · 6 / absmax, that puts the largest block scale at FP8's
  maximum; a value is x / (local / global) rounded to e2m1, times (local / global).
- MXFP4: e2m1 elements and a power-of-two (e8m0) scale per 32: the block maximum rounded to a power
  of two (up when its mantissa would round past e2m1's), divided by 2^2 (e2m1's largest exponent).

Each step follows compressed-tensors 0.20 (``calculate_qparams``, ``generate_gparam``,
``generate_mx_scales``, ``_quantize_dequantize``), in its order and dtypes: the maxima are taken in
the tensor's own dtype and divided there (a bf16 model's scales are bf16 numbers), an FP8 scale is
clamped to ±448 before it is cast, a zero scale is replaced (FP8 block scales by 0.125, float32 ones
by its epsilon) and a global scale that would be NaN or infinite (no data) by 1. Tests hold the
results bit-equal to the package's own functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
FP4_MAX = 6.0
NVFP4_BLOCK = 16
MXFP4_BLOCK = 32
MX_ELEMENT_EXPONENT = 2  # floor(log2(6)): e2m1's largest exponent
FP8_SCALE_EPS = 0.125  # compressed-tensors' stand-in for a block scale that rounds to 0 in FP8


class NumberFormat(str, Enum):
    """How a weight or activation's values are stored; the values are the dashboard's labels."""

    INT = "int"
    FP8 = "fp8"
    NVFP4 = "nvfp4"
    MXFP4 = "mxfp4"

    @property
    def bits(self) -> int:
        return {NumberFormat.FP8: 8, NumberFormat.NVFP4: 4, NumberFormat.MXFP4: 4}.get(self, 0)

    @property
    def block(self) -> int:
        """The fixed block of a block-scaled format (0: none; the scheme's granularity decides)."""
        return {NumberFormat.NVFP4: NVFP4_BLOCK, NumberFormat.MXFP4: MXFP4_BLOCK}.get(self, 0)

    @property
    def is_float(self) -> bool:
        return self is not NumberFormat.INT


def round_fp8(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the nearest e4m3 value (clamped to ±448 first), in x's dtype."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8).to(x.dtype)


def round_fp4(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the nearest e2m1 value (ties to the even one, beyond 6 to 6), in x's dtype:
    compressed-tensors' cast_to_fp4, threshold for threshold."""
    magnitude = x.abs()
    rounded = torch.zeros_like(magnitude)
    for low, high, value, closed in ((0.25, 0.75, 0.5, False), (0.75, 1.25, 1.0, True), (1.25, 1.75, 1.5, False),
                                     (1.75, 2.5, 2.0, True), (2.5, 3.5, 3.0, False), (3.5, 5.0, 4.0, True)):
        inside = (magnitude >= low) & (magnitude <= high) if closed else (magnitude > low) & (magnitude < high)
        rounded = torch.where(inside, value, rounded)
    rounded = torch.where(magnitude > 5.0, FP4_MAX, rounded)
    rounded = torch.where(torch.isnan(x), x, rounded)
    return rounded * torch.sign(x)


def absmax(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """max(|min|, |max|) with the range widened to contain 0 (calculate_qparams' first step)."""
    low, high = torch.minimum(low, torch.zeros_like(low)), torch.maximum(high, torch.zeros_like(high))
    return torch.maximum(low.abs(), high.abs())


def global_scale(maximum: torch.Tensor) -> torch.Tensor:
    """NVFP4's per-tensor scale, 448 · 6 / absmax, computed in absmax's dtype then kept in float32
    (generate_gparam); NaN or infinite (no data, or all zeros) becomes 1, compressed-tensors' safe value."""
    maximum = torch.clamp(maximum, min=torch.finfo(maximum.dtype).tiny)
    scale = FP8_MAX * FP4_MAX / maximum
    return torch.nan_to_num(scale, nan=1.0, posinf=1.0, neginf=1.0).float().reshape(1)


def fp8_scale(maximum: torch.Tensor) -> torch.Tensor:
    """An FP8 tensor, channel or token scale: absmax / 448 in absmax's dtype; 0 becomes that dtype's epsilon."""
    scale = maximum / FP8_MAX
    return torch.where(scale == 0, torch.finfo(scale.dtype).eps, scale)


def nvfp4_block_scales(maximum: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Each block's FP8 scale, global · (block absmax / 6), clamped and rounded to e4m3 (0 -> 0.125),
    in float32 with e4m3 values."""
    local = scale * (maximum / FP4_MAX)  # block absmax / 6 in its dtype, then times the float32 global scale
    local = local.clamp(-FP8_MAX, FP8_MAX).to(FP8).float()
    return torch.where(local == 0, FP8_SCALE_EPS, local)


def mx_exponents(maximum: torch.Tensor) -> torch.Tensor:
    """Each block's e8m0 exponent (uint8 values 0..255, in float32): the block absmax rounded to a power of
    two, up where its mantissa would round up at e2m1's one mantissa bit (round_to_power_2), minus 2."""
    bits = maximum.float().view(torch.int32)
    power = torch.bitwise_and(bits + (1 << (23 - 1 - 1)), 0x7F800000).view(torch.float32)  # sign and exponent kept
    exponent = 127 + torch.floor(torch.log2(power)) - MX_ELEMENT_EXPONENT
    return exponent.clamp(0, 255).round()


def mx_scales(exponents: torch.Tensor) -> torch.Tensor:
    return torch.pow(2.0, exponents - 127)


def blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """[..., n] as [..., n / size, size] (n must be a multiple of size)."""
    if x.shape[-1] % size:
        raise ValueError(f"{x.shape[-1]} values do not split into blocks of {size}")
    return x.unflatten(-1, (x.shape[-1] // size, size))


@dataclass
class FloatGrids:
    """What a float-format weight [out, in] was rounded on, as a checkpoint stores it: ``scale``
    [out, groups] multiplies the element values (NVFP4: block scale / global scale; MXFP4: 2^(e-127));
    ``stored`` is what the file holds per group (FP8: the scale; NVFP4: the e4m3 block scale; MXFP4:
    the exponent byte), ``global_scale`` NVFP4's float32 [1]. group_size: 0 per channel, -1 per tensor."""

    format: NumberFormat
    scale: torch.Tensor
    stored: torch.Tensor
    group_size: int
    global_scale: torch.Tensor | None = None

    def _expanded(self, columns: int) -> torch.Tensor:
        if self.group_size > 0:
            return self.scale.repeat_interleave(self.group_size, dim=1)[:, :columns]
        return self.scale.expand(-1, columns) if self.scale.shape[-1] == 1 else self.scale

    def values(self, fake: torch.Tensor) -> torch.Tensor:
        """The element values of a weight already on these grids (exact: fake = value · scale)."""
        return fake.float() / self._expanded(fake.shape[1])

    def dequantize(self, values: torch.Tensor) -> torch.Tensor:
        return values * self._expanded(values.shape[1])

    def stored_in(self, dtype: torch.dtype) -> FloatGrids:
        return self  # float formats are made in the model's dtype already (see float_weight)


@dataclass
class FloatWeight:
    """A float-format weight: its element values [out, in] (e4m3 or e2m1 numbers, in float32) on its grids."""

    values: torch.Tensor
    grids: FloatGrids

    def dequantize(self) -> torch.Tensor:
        return self.grids.dequantize(self.values)

    def stored_in(self, dtype: torch.dtype) -> FloatWeight:
        return self


def _minmax(x: torch.Tensor, dim) -> tuple[torch.Tensor, torch.Tensor]:
    return (x.amin(dim), x.amax(dim)) if dim is not None else (x.min(), x.max())


def float_weight(weight: torch.Tensor, fmt: NumberFormat, group_size: int = 0,
                 shared_global: torch.Tensor | None = None) -> tuple[torch.Tensor, FloatWeight]:
    """Round-to-nearest of ``weight`` [out, in] (in its own dtype: a bf16 model's scales are
    computed in bf16, as llm-compressor's observers compute them) to ``fmt``: the fake-quantized
    float32 weight and what a checkpoint stores. FP8: group_size 0 per channel, -1 per tensor.
    ``shared_global``: NVFP4's absmax over the layers vLLM fuses with this one (q/k/v, gate/up),
    which share one global scale (llm-compressor's fused observers); default: this weight's."""
    fmt = NumberFormat(fmt)
    if fmt is NumberFormat.FP8:
        low, high = _minmax(weight, None if group_size == -1 else 1)
        scale = fp8_scale(absmax(low, high)).reshape(-1, 1)
        values = round_fp8((weight / scale).float())  # divided in the weight's dtype, as compressed-tensors does
        grids = FloatGrids(fmt, scale.float(), scale.float(), group_size)
    elif fmt is NumberFormat.NVFP4:
        grouped = blocks(weight, NVFP4_BLOCK)
        maximum = absmax(*_minmax(weight, None)) if shared_global is None else shared_global.to(weight.dtype)
        tensor_scale = global_scale(maximum)
        local = nvfp4_block_scales(absmax(*_minmax(grouped, -1)), tensor_scale)
        scale = local / tensor_scale
        values = round_fp4(torch.clamp(grouped.float() / scale[..., None], -FP4_MAX, FP4_MAX)).flatten(-2)
        grids = FloatGrids(fmt, scale, local, NVFP4_BLOCK, tensor_scale)
    elif fmt is NumberFormat.MXFP4:
        grouped = blocks(weight, MXFP4_BLOCK)
        exponents = mx_exponents(absmax(*_minmax(grouped, -1)))
        scale = mx_scales(exponents)
        values = round_fp4(torch.clamp(grouped.float() / scale[..., None], -FP4_MAX, FP4_MAX)).flatten(-2)
        grids = FloatGrids(fmt, scale, exponents, MXFP4_BLOCK)
    else:
        raise ValueError(f"{fmt.value} is not a floating-point format")
    quantized = FloatWeight(values, grids)
    return quantized.dequantize(), quantized
