"""Round-to-nearest weight quantization: each group of columns of each row on its own grid."""
from __future__ import annotations

import torch

from engine.quant.grid import row_grid


def rtn(weight: torch.Tensor, bits: int, group_size: int = 0, symmetric: bool = True) -> torch.Tensor:
    """Fake-quantized copy of ``weight`` [out, in] (float32): one grid per row (group_size 0) or
    per ``group_size`` consecutive input columns of each row."""
    weight = weight.float()
    if not group_size or group_size >= weight.shape[1]:
        return row_grid(weight, bits, symmetric).fake_quantize(weight)
    out = torch.empty_like(weight)
    for start in range(0, weight.shape[1], group_size):
        part = weight[:, start:start + group_size]
        out[:, start:start + group_size] = row_grid(part, bits, symmetric).fake_quantize(part)
    return out
