"""Static activation ranges from streamed statistics: min/max, a percentile of |x|, or the clip that
minimizes the expected quantization error over the |x| histogram."""
from __future__ import annotations

import torch

from engine.errors import SpecError
from engine.quant.grid import Grid, clip_grid, minmax_grid
from engine.quant.specs import ActivationSpec, Granularity, RangeMethod
from engine.stats.accumulators import TENSOR_BINS
from engine.stats.histogram import LogBins, percentiles_from_counts

CANDIDATES = 256


def bin_values(bins: LogBins) -> torch.Tensor:
    """A representative |x| per bin: the middle of its edges (bins are ~3% wide, so close enough)."""
    edges = bins.edges()
    return (edges[:-1] + edges[1:]) / 2


def expected_error(counts: torch.Tensor, values: torch.Tensor, clips: torch.Tensor, bits: int) -> torch.Tensor:
    """Expected squared error per clip of symmetric b-bit quantization of values distributed as
    ``counts``: values inside [-c, c] get uniform rounding noise step²/12 with step = c/(2^(b-1)-1);
    values beyond are clipped to c and lose (|x| - c)²."""
    step = clips / (2 ** (bits - 1) - 1)
    inside = values[None, :] <= clips[:, None]
    clipped = (values[None, :] - clips[:, None]).clamp(min=0) ** 2
    per_value = torch.where(inside, (step**2 / 12)[:, None], clipped)
    return per_value @ counts.double() / counts.sum().clamp(min=1)


def mse_clip(counts: torch.Tensor, absmax: float, bits: int, bins: LogBins = TENSOR_BINS) -> float:
    """The clip in (0, absmax] with the least expected error, searched over ``CANDIDATES`` clips
    spaced geometrically from absmax / 2^12 to absmax."""
    if absmax <= 0:
        return 0.0
    clips = absmax * torch.logspace(-12 * 0.30103, 0, CANDIDATES, dtype=torch.float64, device=counts.device)
    errors = expected_error(counts, bin_values(bins).clamp(max=absmax), clips, bits)
    return float(clips[int(torch.argmin(errors))])


def relative_error(counts: torch.Tensor, clip: float, bits: int, bins: LogBins = TENSOR_BINS) -> float:
    """Expected squared quantization error at ``clip`` over the mean square of the values."""
    values = bin_values(bins)
    counts = counts.double()
    power = float(values.pow(2) @ counts / counts.sum().clamp(min=1))
    error = float(expected_error(counts, values, torch.tensor([clip], dtype=torch.float64, device=counts.device), bits)[0])
    return error / power if power > 0 else float("nan")


def activation_grid(arrays: dict[str, torch.Tensor], spec: ActivationSpec, collected: tuple[float, ...]) -> Grid:
    """The grid one layer input is quantized on, from its statistics arrays (a StatsReport entry)."""
    if not spec.symmetric:
        low, high = arrays["min"].float(), arrays["max"].float()
        if spec.granularity is Granularity.TENSOR:
            low, high = low.min(), high.max()
        return minmax_grid(low, high, spec.bits, symmetric=False)
    clip = torch.nan_to_num(_clip(arrays, spec, collected), nan=0.0, posinf=0.0, neginf=0.0)  # unseen channels
    return clip_grid(clip.float(), spec.bits)


def _clip(arrays: dict[str, torch.Tensor], spec: ActivationSpec, collected: tuple[float, ...]) -> torch.Tensor:
    absmax = arrays["absmax"].double()
    per_tensor = spec.granularity is Granularity.TENSOR
    if spec.range_method is RangeMethod.MINMAX:
        return absmax.max() if per_tensor else absmax
    if spec.range_method is RangeMethod.MSE:
        return torch.tensor(mse_clip(arrays["tensor_counts"], float(absmax.max()), spec.bits), device=absmax.device)
    if per_tensor:
        quantile = torch.tensor([spec.percentile / 100.0], dtype=torch.float64, device=absmax.device)
        return percentiles_from_counts(arrays["tensor_counts"], TENSOR_BINS, quantile, absmax.max())[0]
    if "channel_percentiles" not in arrays or spec.percentile not in collected:
        raise SpecError(f"Per-channel p{spec.percentile:g} ranges need that percentile collected with per-channel "
                        f"histograms (collected: {', '.join(f'{p:g}' for p in collected)}); "
                        "collect it in Activation ranges or use per-tensor ranges.")
    return arrays["channel_percentiles"][collected.index(spec.percentile)].double()
