"""Is the calibration set enough for GPTQ? Spectrum, rank, conditioning and the damping Cholesky needs."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

# GPTQ's damping: H + d * mean(diag(H)) * I with d = 0.01 by default; we report the smallest of these that works.
DAMPING_GRID = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class HessianDiagnostics:
    layer: str
    channels: int
    tokens: int
    trace: float
    mean_diagonal: float
    dead_channels: int
    rank: int | float  # NaN when not computed (quick diagnosis)
    condition_number: float
    min_damping: float | None
    warning: str

    def as_dict(self) -> dict:
        return asdict(self)


def dead_channels(hessian: torch.Tensor) -> torch.Tensor:
    """Input channels never active: zero on the diagonal (GPTQ sets their diagonal to 1)."""
    return torch.diagonal(hessian) == 0


def numerical_rank(eigenvalues: torch.Tensor, size: int) -> int:
    """Eigenvalues above λmax · n · ε(float32) count: numpy's matrix_rank tolerance at the precision
    GPTQ factorizes in. Below it an eigenvalue is lost in float32 rounding."""
    top = float(eigenvalues.abs().max()) if eigenvalues.numel() else 0.0
    return int((eigenvalues > top * size * torch.finfo(torch.float32).eps).sum())


def min_damping(hessian: torch.Tensor, grid=DAMPING_GRID) -> float | None:
    """Smallest fraction d of the mean diagonal for which Cholesky of H + d·mean·I succeeds in float32,
    dead channels patched as GPTQ patches them. One float32 working copy (no identity matrix, no
    float64 copy): a 14,336-wide Hessian needs its own size twice more, not six times."""
    dead = dead_channels(hessian)
    patched = torch.diagonal(hessian).double().masked_fill(dead, 1.0)
    mean = float(patched.mean())
    work = torch.empty_like(hessian, dtype=torch.float32)
    for damping in grid:
        work.copy_(hessian)
        work.diagonal().copy_(patched + damping * mean)
        _, info = torch.linalg.cholesky_ex(work)
        if int(info) == 0:
            return damping
    return None


QUICK_GRID = (0.0, 0.01)  # without damping, and at GPTQ's default


def diagnose(layer: str, hessian: torch.Tensor, tokens: int, spectrum: bool = True) -> tuple[HessianDiagnostics, torch.Tensor]:
    """Diagnostics of one Hessian and its eigenvalues (descending, float64).

    Without ``spectrum`` (a quick diagnosis, for matrices too large to decompose in time): no
    eigenvalues, so rank and condition are NaN, and the damping is tried at 0 and GPTQ's 0.01 only."""
    channels = hessian.shape[0]
    dead = dead_channels(hessian)
    if spectrum:
        # In the precision H was summed in: eigenvalues below ~ε·λmax are rounding noise of the sums
        # either way, and a float64 solve of a float32 sum costs 1.6x (14.5 s of 43 s on Gemma).
        working = hessian if hessian.dtype in (torch.float32, torch.float64) else hessian.float()
        eigenvalues = torch.linalg.eigvalsh(working).to(torch.float64).flip(0)
        rank = numerical_rank(eigenvalues, channels)
        smallest = float(eigenvalues[-1])
        condition = float(eigenvalues[0] / smallest) if smallest > 0 else float("inf")
    else:
        eigenvalues, rank, condition = torch.empty(0, dtype=torch.float64), float("nan"), float("nan")
    damping = min_damping(hessian, DAMPING_GRID if spectrum else QUICK_GRID)
    return HessianDiagnostics(
        layer=layer, channels=channels, tokens=tokens, trace=float(torch.diagonal(hessian).double().sum()),
        mean_diagonal=float(torch.diagonal(hessian).double().mean()), dead_channels=int(dead.sum()), rank=rank,
        condition_number=condition, min_damping=damping,
        warning=rank_warning(channels, tokens, rank, int(dead.sum()), damping),
    ), eigenvalues


def _damping_text(damping: float | None) -> str:
    if damping is None:
        return "Cholesky fails even at damping 1.0 of the mean diagonal"
    return "Cholesky succeeds without damping" if damping == 0 else f"Cholesky needs damping {damping:g} of the mean diagonal"


def rank_warning(channels: int, tokens: int, rank: int, dead: int, damping: float | None) -> str:
    """A plain sentence when the Hessian is rank-deficient: why, and whether more data helps."""
    if dead:
        return (f"{dead} of {channels} input channels are never active (zero diagonal): no amount of data makes this "
                f"Hessian full rank; GPTQ sets their diagonal to 1. {_damping_text(damping)}.")
    if rank >= channels or (math.isnan(rank) and tokens >= channels):  # full rank, or unknown and not data-limited
        return ""
    if tokens < channels:  # rank <= tokens: the data is what limits it
        return (f"Rank {rank} of {channels}: only {tokens:,} tokens reached this layer; a full-rank Hessian needs at "
                f"least {channels - tokens:,} more tokens. {_damping_text(damping)}.")
    return (f"Numerical rank {rank} of {channels} in float32 although {tokens:,} tokens reached this layer: the "
            f"inputs carry energy so unevenly (outlier channels, or fewer independent directions than channels) that "
            f"{channels - rank} eigenvalues fall below float32 resolution. More data of the same kind will not fix that; "
            f"damping does. {_damping_text(damping)}.")
