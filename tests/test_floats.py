"""FP8, NVFP4 and MXFP4 bit for bit as compressed-tensors computes them: the scales its observers'
calculate_qparams / generate_gparam give for the same min and max, and its own fake_quantize on
the same tensors (float32 and bfloat16 weights, heavy tails, zero blocks, ties)."""
from __future__ import annotations

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from compressed_tensors.quantization.quant_args import FP4_E2M1_DATA
from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

from engine.quant.formats.floats import NumberFormat, float_weight, round_fp4, round_fp8


def heavy_tailed(rows: int = 64, columns: int = 256, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator) * torch.rand(rows, 1, generator=generator) * 0.1
    weight[3, 17] = 4.0  # an outlier: its block's scale, its channel's, the tensor's
    weight[5, :32] = 0.0  # a zero block: compressed-tensors' stand-in scale
    weight[7, 40:56] = torch.linspace(-1, 1, 16)
    return weight.to(dtype)


def weight_args(preset: str) -> QuantizationArgs:
    return preset_name_to_scheme(preset, ["Linear"]).weights


def theirs(weight: torch.Tensor, args: QuantizationArgs, dim, fused_absmax: torch.Tensor | None = None) -> torch.Tensor:
    """compressed-tensors: min/max as llm-compressor's observers take them, calculate_qparams, fake_quantize."""
    if args.strategy == "tensor":
        low, high = weight.min().reshape(1), weight.max().reshape(1)
    else:
        grouped = weight.unflatten(-1, (-1, args.group_size)) if args.group_size else weight
        low, high = grouped.amin(dim), grouped.amax(dim)
        if not args.group_size:
            low, high = low[:, None], high[:, None]
    tensor_scale = None
    if args.strategy == "tensor_group":
        absolute = fused_absmax if fused_absmax is not None else torch.maximum(-weight.min(), weight.max())
        tensor_scale = generate_gparam(-absolute.reshape(1), absolute.reshape(1))
    scale, zero = calculate_qparams(low, high, args, global_scale=tensor_scale)
    scale = scale.to(weight.dtype)  # the module's weight_scale parameter is in the weight's dtype (initialize.py)
    return fake_quantize(weight, scale, zero, args, global_scale=tensor_scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("preset,fmt,group", [("FP8", "fp8", -1), ("FP8_DYNAMIC", "fp8", 0), ("NVFP4A16", "nvfp4", 16),
                                              ("MXFP4A16", "mxfp4", 32)])
def test_weights_are_compressed_tensors_fake_quantization_bit_for_bit(preset, fmt, group, dtype):
    weight = heavy_tailed(dtype=dtype)
    fake, stored = float_weight(weight, NumberFormat(fmt), group)
    expected = theirs(weight, weight_args(preset), -1)
    assert torch.equal(fake.to(dtype), expected.to(dtype)), (preset, float((fake - expected.float()).abs().max()))
    assert torch.equal(stored.dequantize(), fake)
    levels = {"fp8": None, "nvfp4": 6.0, "mxfp4": 6.0}[fmt]
    if levels is not None:  # every element value is an e2m1 number
        assert set(stored.values.abs().unique().tolist()) <= {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}


def test_nvfp4_fused_layers_share_the_global_scale_of_their_largest():
    """vLLM fuses q/k/v and gate/up into one layer: llm-compressor gives them one global scale, from
    the absmax over all of them; so does calibscope when given it."""
    q, k = heavy_tailed(seed=1), heavy_tailed(seed=2) * 3
    shared = torch.maximum(q.abs().max(), k.abs().max())
    for weight in (q, k):
        fake, stored = float_weight(weight, NumberFormat.NVFP4, 16, shared_global=shared)
        assert torch.equal(fake, theirs(weight, weight_args("NVFP4A16"), -1, fused_absmax=shared))
        assert float(stored.grids.global_scale) == pytest.approx(448 * 6 / float(shared))


def test_rounding_to_e4m3_and_e2m1_matches_the_package_at_every_tie():
    x = torch.cat([torch.linspace(-8, 8, 20001), torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, 7.0, 1e9])])
    assert torch.equal(round_fp4(x), FP4_E2M1_DATA.cast_to_fp4(x.clone()))
    wide = torch.cat([torch.linspace(-500, 500, 100001), torch.tensor([2.0**-9, 2.0**-10, 448.0, 464.0, 1e6])])
    assert torch.equal(round_fp8(wide), wide.clamp(-448, 448).to(torch.float8_e4m3fn).float())


def test_an_all_zero_weight_gets_finite_scales_never_nan():
    for fmt, group in (("fp8", -1), ("fp8", 0), ("nvfp4", 16), ("mxfp4", 32)):
        fake, stored = float_weight(torch.zeros(8, 64), NumberFormat(fmt), group)
        assert torch.equal(fake, torch.zeros(8, 64))
        assert torch.isfinite(stored.grids.scale).all() and (stored.grids.scale > 0).all()
        if stored.grids.global_scale is not None:
            assert float(stored.grids.global_scale) == 1.0  # compressed-tensors' safe value, not 448·6/0
