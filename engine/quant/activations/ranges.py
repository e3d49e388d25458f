"""Static activation ranges from streamed statistics: min/max, a percentile of |x|, the clip that
minimizes the expected quantization error over the |x| histogram (MSE), the clip whose quantized
histogram is nearest the data's (entropy: KL divergence, TensorRT's and ModelOpt's calibrator), and
for NVFP4's global scale ModelOpt's headroom over the per-block maxima."""
from __future__ import annotations

import numpy as np
import torch

from engine.errors import CalibscopeError, SpecError
from engine.quant.formats.floats import FP8_MAX, NumberFormat, round_fp8
from engine.quant.formats.grid import Grid, clip_grid, minmax_grid
from engine.quant.specs import ActivationSpec, Granularity, RangeMethod
from engine.stats import TENSOR_BINS, LogBins, bin_values, headroom_amax, percentiles_from_counts

CANDIDATES = 256
# entropy: ModelOpt's HistogramCalibrator defaults (2,048 linear bins; thresholds from bin 128 up)
LINEAR_BINS, START_BIN = 2048, 128


def _step(values: torch.Tensor, clips: torch.Tensor, bits: int, fmt: NumberFormat) -> torch.Tensor:
    """The rounding step at each value for each clip [clips, values]: uniform (int) or e4m3's, which
    is 2^(e - 3) at a scaled value in [2^e, 2^(e+1)) and 2^-9 among its subnormals (below 2^-6)."""
    if fmt is NumberFormat.FP8:
        scale = clips / FP8_MAX
        scaled = values[None, :] / scale[:, None]
        exponent = torch.floor(torch.log2(scaled.clamp(min=2.0**-6)))
        return torch.pow(2.0, exponent - 3) * scale[:, None]
    return (clips / (2 ** (bits - 1) - 1))[:, None].expand(-1, values.numel())


def expected_error(counts: torch.Tensor, values: torch.Tensor, clips: torch.Tensor, bits: int,
                   fmt: NumberFormat = NumberFormat.INT) -> torch.Tensor:
    """Expected squared error per clip of symmetric quantization of values distributed as ``counts``:
    values inside [-c, c] get rounding noise step²/12 (int: step = c/(2^(b-1)-1); FP8: e4m3's step
    where the value lies, with scale c/448); values beyond are clipped to c and lose (|x| - c)²."""
    step = _step(values, clips, bits, fmt)
    inside = values[None, :] <= clips[:, None]
    clipped = (values[None, :] - clips[:, None]).clamp(min=0) ** 2
    per_value = torch.where(inside, step**2 / 12, clipped)
    return per_value @ counts.double() / counts.sum().clamp(min=1)


def mse_clip(counts: torch.Tensor, absmax: float, bits: int, bins: LogBins = TENSOR_BINS,
             fmt: NumberFormat = NumberFormat.INT) -> float:
    """The clip in (0, absmax] with the least expected error, searched over ``CANDIDATES`` clips
    spaced geometrically from absmax / 2^12 to absmax."""
    if absmax <= 0:
        return 0.0
    clips = absmax * torch.logspace(-12 * 0.30103, 0, CANDIDATES, dtype=torch.float64, device=counts.device)
    errors = expected_error(counts, bin_values(bins).clamp(max=absmax).to(counts.device), clips, bits, fmt)
    return float(clips[int(torch.argmin(errors))])


def linear_histogram(counts: torch.Tensor, absmax: float, bins: LogBins = TENSOR_BINS,
                     linear: int = LINEAR_BINS) -> np.ndarray:
    """The log-binned |x| histogram as ``linear`` equal bins over [0, absmax], each log bin's count
    spread evenly over its width (the cumulative count interpolated at the linear edges)."""
    edges = bins.edges().numpy().copy()
    edges[-1] = max(edges[-1], absmax)
    cumulative = np.concatenate([[0.0], np.cumsum(counts.double().cpu().numpy())])
    at = np.interp(np.linspace(0.0, absmax, linear + 1), edges, cumulative)
    at[-1] = cumulative[-1]  # nothing lies above absmax: the bin holding it ends there
    return np.diff(at)


def _fp8_levels(bins: int) -> np.ndarray:
    """[thresholds, bins]: the e4m3 code (its byte: monotonic for values >= 0) each linear bin's centre
    rounds to when threshold bin i maps to 448, for every threshold from START_BIN (one cast for all)."""
    thresholds = torch.arange(START_BIN, bins + 1, dtype=torch.float64, device="cpu")[:, None]
    centres = (torch.arange(bins, dtype=torch.float64, device="cpu")[None, :] + 0.5) / thresholds * FP8_MAX
    return round_fp8(centres.float()).to(torch.float8_e4m3fn).view(torch.uint8).numpy().astype(np.int64)


def _levels_of(threshold_bin: int, fmt: NumberFormat, nbins: int, fp8: np.ndarray | None) -> np.ndarray:
    """Which quantization level each of the first ``threshold_bin`` linear bins falls in: int, as
    ModelOpt digitizes (nbins equal levels over [0, threshold)); FP8, the e4m3 value its centre
    rounds to with the threshold at 448."""
    if fmt is NumberFormat.FP8:
        return fp8[threshold_bin - START_BIN, :threshold_bin]
    return np.digitize(np.arange(threshold_bin), np.linspace(0, threshold_bin, num=nbins + 1)) - 1


def _kl(reference: np.ndarray, quantized: np.ndarray) -> float:
    """KL(reference ‖ quantized) of two unnormalized distributions (scipy.stats.entropy's)."""
    p, q = reference / reference.sum(), quantized / quantized.sum()
    mask = p > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def entropy_clip(counts: torch.Tensor, absmax: float, bits: int, fmt: NumberFormat = NumberFormat.INT) -> float:
    """ModelOpt's entropy calibration (``_compute_amax_entropy``, TensorRT's method) on the |x|
    histogram laid out in 2,048 linear bins: for each threshold bin i from 128 up, the reference is
    the bins below i with everything above added to the last, the candidate merges those bins into
    the format's levels (int: 2^(b-1) equal ones; FP8: e4m3's values) and spreads each level's count
    evenly over its non-empty bins; the last threshold of least KL divergence wins."""
    if absmax <= 0:
        return 0.0
    histogram = linear_histogram(counts, absmax)
    histogram[0] = histogram[1]  # ModelOpt's: the zeros' bin would dominate every divergence
    nbins = 1 << (bits - 1)
    fp8 = _fp8_levels(LINEAR_BINS) if fmt is NumberFormat.FP8 else None
    divergences = []
    for i in range(START_BIN, LINEAR_BINS + 1):
        levels = _levels_of(i, fmt, nbins, fp8)
        present = histogram[:i] != 0
        mass = np.bincount(levels[present], weights=histogram[:i][present], minlength=levels.max() + 1)
        members = np.bincount(levels[present], minlength=levels.max() + 1)
        spread = np.where(present, (mass / np.maximum(members, 1))[levels], 0.0)
        reference = histogram[:i].copy()
        reference[-1] += histogram[i:].sum()
        divergences.append(_kl(reference, spread))
    divergences = np.asarray(divergences)
    last_least = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return float((last_least + START_BIN) * absmax / LINEAR_BINS)


def relative_error(counts: torch.Tensor, clip: float, bits: int, bins: LogBins = TENSOR_BINS,
                   fmt: NumberFormat = NumberFormat.INT) -> float:
    """Expected squared quantization error at ``clip`` over the mean square of the values."""
    values = bin_values(bins).to(counts.device)
    counts = counts.double()
    power = float(values.pow(2) @ counts / counts.sum().clamp(min=1))
    error = float(expected_error(counts, values, torch.tensor([clip], dtype=torch.float64, device=counts.device), bits, fmt)[0])
    return error / power if power > 0 else float("nan")


def activation_grid(arrays: dict[str, torch.Tensor], spec: ActivationSpec, collected: tuple[float, ...]) -> Grid:
    """The integer grid one layer input is quantized on, from its statistics arrays (a StatsReport entry)."""
    if not spec.symmetric:
        low, high = arrays["min"].float(), arrays["max"].float()
        if spec.granularity is Granularity.TENSOR:
            low, high = low.min(), high.max()
        return minmax_grid(low, high, spec.bits, symmetric=False)
    clip = torch.nan_to_num(activation_clip(arrays, spec, collected), nan=0.0, posinf=0.0, neginf=0.0)  # unseen channels
    return clip_grid(clip.float(), spec.bits)


def activation_clip(arrays: dict[str, torch.Tensor], spec: ActivationSpec, collected: tuple[float, ...]) -> torch.Tensor:
    """|x|'s range as ``spec.range_method`` chooses it: per tensor (a 0-d tensor) or per channel."""
    absmax = arrays["absmax"].double()
    per_tensor = spec.granularity is Granularity.TENSOR
    method = spec.range_method
    if method is RangeMethod.MINMAX:
        return absmax.max() if per_tensor else absmax
    if method is RangeMethod.MSE:
        return torch.tensor(mse_clip(arrays["tensor_counts"], float(absmax.max()), spec.bits, fmt=spec.format),
                            device=absmax.device)
    if method is RangeMethod.ENTROPY:
        return torch.tensor(entropy_clip(arrays["tensor_counts"], float(absmax.max()), spec.bits, spec.format),
                            device=absmax.device)
    if method is RangeMethod.HEADROOM:
        if "block_counts" not in arrays:
            raise CalibscopeError("Headroom calibration needs the histogram of each block of 16 channels' maximum, which these "
                                  "statistics lack (collected by an older calibscope, or inputs whose width is not a multiple "
                                  "of 16): collect the statistics again, or use minmax or percentile.")
        return torch.tensor(headroom_amax(arrays["block_counts"], float(absmax.max())), device=absmax.device)
    if per_tensor:
        quantile = torch.tensor([spec.percentile / 100.0], dtype=torch.float64, device=absmax.device)
        return percentiles_from_counts(arrays["tensor_counts"], TENSOR_BINS, quantile, absmax.max())[0]
    if "channel_percentiles" not in arrays or spec.percentile not in collected:
        raise SpecError(f"Per-channel p{spec.percentile:g} ranges need that percentile collected with per-channel "
                        f"histograms (collected: {', '.join(f'{p:g}' for p in collected)}); "
                        "collect it in Activation ranges or use per-tensor ranges.")
    return arrays["channel_percentiles"][collected.index(spec.percentile)].double()
