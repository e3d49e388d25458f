"""What a quantized weight costs on the calibration data, measured through its input's Hessian."""
from __future__ import annotations

import torch


def output_error(delta: torch.Tensor, weight: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative change of the layer's output on the calibration tokens:
    Σ‖ΔW x‖² / Σ‖W x‖² = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) for H ∝ Σ xxᵀ (the scale cancels)."""
    hessian = hessian.to(weight.device, torch.float32)
    change = torch.sum((delta @ hessian) * delta)
    signal = torch.sum((weight @ hessian) * weight)
    return float(change / signal) if signal > 0 else float("nan")
