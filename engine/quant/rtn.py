"""Round-to-nearest weight quantization: each group of columns of each row on its own grid."""
from __future__ import annotations

import torch

from engine.quant.grid import GroupGrids, row_grid


def rtn_grids(weight: torch.Tensor, bits: int, group_size: int = 0, symmetric: bool = True) -> GroupGrids:
    """One grid per row of ``weight`` [out, in] (group_size 0) or per ``group_size`` consecutive
    input columns of each row, from its min and max."""
    weight = weight.float()
    size = group_size if group_size and group_size < weight.shape[1] else weight.shape[1]
    grids = [row_grid(part, bits, symmetric) for part in weight.split(size, dim=1)]
    scale, zero = torch.cat([grid.scale for grid in grids], 1), torch.cat([grid.zero for grid in grids], 1)
    return GroupGrids(scale, zero, bits, group_size, symmetric)


def rtn_quantized(weight: torch.Tensor, bits: int, group_size: int = 0, symmetric: bool = True) -> tuple[torch.Tensor, GroupGrids]:
    """The fake-quantized float32 copy of ``weight`` and the grids it was rounded on."""
    grids = rtn_grids(weight, bits, group_size, symmetric)
    return grids.fake_quantize(weight.float()), grids


def rtn(weight: torch.Tensor, bits: int, group_size: int = 0, symmetric: bool = True) -> torch.Tensor:
    """Fake-quantized copy of ``weight`` [out, in] (float32)."""
    return rtn_quantized(weight, bits, group_size, symmetric)[0]
