"""Calibrating FP8 and NVFP4 inputs: entropy equal to ModelOpt's algorithm on the same histogram,
FP8's MSE model against real e4m3 rounding, NVFP4's headroom formula, the streamed per-block
histogram against a one-shot reference, and no NaN or zero scale from data that never arrives."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import entropy

from engine.errors import CalibscopeError
from engine.hooks import TokenIndex
from engine.quant import ActivationSpec
from engine.quant.activations.inputs import Nvfp4Inputs, input_quantizer
from engine.quant.activations.ranges import LINEAR_BINS, START_BIN, entropy_clip, expected_error, linear_histogram, mse_clip
from engine.quant.formats.floats import FP8_MAX, NumberFormat, round_fp8
from engine.stats.accumulators import TENSOR_BINS, ActivationAccumulator
from engine.stats.blocks import FP8_NORMAL_RANGE, headroom_amax
from engine.stats.histogram import tensor_histogram


def modelopt_entropy(calib_hist: np.ndarray, calib_bin_edges: np.ndarray, num_bits: int = 8) -> float:
    """ModelOpt's _compute_amax_entropy (modelopt/torch/quantization/calib/histogram.py), unsigned
    False, stride 1, start bin 128, transcribed loop for loop."""
    bins = calib_hist.copy()
    bins[0] = bins[1]
    divergences = []
    nbins = 1 << (num_bits - 1)
    new_density_counts = np.zeros(nbins, dtype=np.float64)
    for i in range(START_BIN, len(bins) + 1):
        new_density_counts.fill(0)
        space = np.linspace(0, i, num=nbins + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        counter = Counter(digitized_space)
        for key, val in counter.items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i, dtype=np.float64)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        new_density = new_density / new_density.sum()
        reference_density = np.array(bins[:len(digitized_space)], dtype=np.float64)
        reference_density[-1] += np.sum(bins[i:])
        divergences.append(entropy(reference_density / reference_density.sum(), new_density))
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - np.argmin(divergences[::-1])
    return float(calib_bin_edges[last_argmin + START_BIN])


def laplace_counts(scale: float = 1.0, n: int = 200_000, seed: int = 0) -> tuple[torch.Tensor, float]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.distributions.Laplace(0.0, scale).sample((n,)) if seed is None else \
        -scale * torch.log(torch.rand(n, generator=generator)) * torch.sign(torch.rand(n, generator=generator) - 0.5)
    x[:5] = 40.0 * scale  # a few outliers: the range entropy and MSE decide to clip or not
    return tensor_histogram(x, TENSOR_BINS), float(x.abs().max())


def test_entropy_is_modelopts_algorithm_on_the_same_histogram():
    counts, absmax = laplace_counts()
    histogram = linear_histogram(counts, absmax)
    edges = np.linspace(0.0, absmax, LINEAR_BINS + 1)
    reference = modelopt_entropy(histogram, edges)
    assert entropy_clip(counts, absmax, 8) == pytest.approx(reference, rel=1e-12)
    assert 0.05 * absmax < reference < 0.9 * absmax  # the outliers are clipped, the bulk kept


def test_the_linear_histogram_keeps_every_count():
    counts, absmax = laplace_counts()
    assert linear_histogram(counts, absmax).sum() == pytest.approx(float(counts.sum()), rel=1e-9)


def test_fp8_mse_model_matches_real_e4m3_rounding():
    """The expected error of FP8 quantization at a clip, from the histogram, against the measured
    error of rounding the same sample to e4m3 (within the log bins' resolution)."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(400_000, generator=generator) * 0.5
    counts = tensor_histogram(x, TENSOR_BINS)
    values = torch.from_numpy(((TENSOR_BINS.edges()[:-1] + TENSOR_BINS.edges()[1:]) / 2).numpy())
    for clip in (float(x.abs().max()), 1.0, 0.3):
        scale = clip / FP8_MAX
        measured = float(((round_fp8(x.clamp(-clip, clip) / scale) * scale - x) ** 2).mean())
        modelled = float(expected_error(counts, values.clamp(max=float(x.abs().max())), torch.tensor([clip], dtype=torch.float64),
                                        8, NumberFormat.FP8)[0])
        assert modelled == pytest.approx(measured, rel=0.15), clip
    # e4m3 is a float: its relative error is nearly the same at any scale, so clipping outliers buys
    # FP8 little, while int8's uniform step does gain from it
    heavy, absmax = laplace_counts(0.01)
    fp8 = mse_clip(heavy, absmax, 8, fmt=NumberFormat.FP8)
    assert fp8 > 0.95 * absmax and mse_clip(heavy, absmax, 8) < 0.9 * fp8


def test_headroom_is_modelopts_formula():
    block_max = torch.cat([torch.full((9_799,), 1.0), torch.full((200,), 0.01), torch.tensor([2.0])])
    counts = tensor_histogram(block_max, TENSOR_BINS)
    amax = headroom_amax(counts, 2.0)
    assert amax == pytest.approx(16384 * 0.01, rel=0.03)  # rho · the 1st percentile, far above the floor
    # blocks spanning 1e5 (more than FP8's 28,672 normal range; above ModelOpt's 1e-6 exclusion): the floor
    wide = torch.cat([torch.full((150,), 1e-5), torch.full((9_850,), 1.0)])
    assert headroom_amax(tensor_histogram(wide, TENSOR_BINS), 1.0) == pytest.approx(1.0, rel=0.03)
    assert 1.0 / 1e-5 > FP8_NORMAL_RANGE


def test_the_streamed_block_histogram_is_the_one_shot_one_however_batched():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(96, 64, generator=generator) * torch.rand(1, 64, generator=generator) * 3
    reference = tensor_histogram(x.view(96, 4, 16).abs().amax(-1), TENSOR_BINS)

    def accumulated(chunks):
        total = ActivationAccumulator(64)
        for part in x.split(chunks):
            index = TokenIndex(torch.zeros(part.shape[0], dtype=torch.long), torch.arange(part.shape[0]))
            total.update(part, index)
        return total

    assert torch.equal(accumulated(96).block_counts, reference)
    assert torch.equal(accumulated(7).block_counts, reference)
    merged = accumulated(50).merge(accumulated(96))
    assert torch.equal(merged.block_counts, 2 * reference)
    assert ActivationAccumulator(40).block_counts is None  # 40 channels: no NVFP4 blocks


def test_an_input_never_reached_gets_no_scale_and_a_message_naming_it():
    dead = {"absmax": torch.zeros(64), "tensor_counts": torch.zeros(TENSOR_BINS.count, dtype=torch.int64),
            "min": torch.zeros(64), "max": torch.zeros(64)}
    for spec in (ActivationSpec(format="fp8"), ActivationSpec(format="nvfp4"),
                 ActivationSpec(format="nvfp4", range_method="percentile")):
        with pytest.raises(CalibscopeError, match=r"layers\.3\.mlp\.down_proj: its calibrated input maximum is (0|nan) "):
            input_quantizer("model.layers.3.mlp.down_proj", dead, spec, (99.99,), torch.bfloat16, 64)
    nan = {**dead, "absmax": torch.full((64,), float("nan"))}
    with pytest.raises(CalibscopeError, match="maximum is nan"):
        input_quantizer("model.layers.3.mlp.down_proj", nan, ActivationSpec(format="nvfp4"), (99.99,), torch.float32, 64)
    live = {**dead, "absmax": torch.full((64,), 3.0)}
    quantizer = input_quantizer("x", live, ActivationSpec(format="nvfp4"), (99.99,), torch.float32, 64)
    assert isinstance(quantizer, Nvfp4Inputs) and float(quantizer.global_scale) == pytest.approx(448 * 6 / 3.0)
    assert torch.isfinite(quantizer.fake_quantize(torch.zeros(2, 64))).all()  # a zero block at inference: no NaN
