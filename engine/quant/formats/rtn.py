"""Round-to-nearest weight quantization: each group of columns of each row on its own grid."""
from __future__ import annotations

import torch

from engine.quant.formats.grid import GroupGrids, minmax_grid


def group_width(columns: int, group_size: int) -> int:
    """Input columns per grid: ``group_size`` (the last group of a row takes what is left), or the whole
    row per channel (0) or when the group is wider than the row."""
    return group_size if 0 < group_size < columns else columns


def padded_groups(matrix: torch.Tensor, group_size: int) -> torch.Tensor:
    """[rows, groups, width] view of ``matrix`` [rows, columns], zero columns appended to fill the last
    group (a grid always holds 0, so they change no group's grid)."""
    width = group_width(matrix.shape[-1], group_size)
    missing = -matrix.shape[-1] % width
    if missing:
        matrix = torch.nn.functional.pad(matrix, (0, missing))
    return matrix.reshape(*matrix.shape[:-1], -1, width)


def rtn_grids(weight: torch.Tensor, bits: int, group_size: int = 0, symmetric: bool = True) -> GroupGrids:
    """One grid per row of ``weight`` [out, in] (group_size 0) or per ``group_size`` consecutive
    input columns of each row, from its min and max."""
    grouped = padded_groups(weight.float(), group_size)  # the zeros filling the last group: every grid holds 0 anyway
    grid = minmax_grid(grouped.amin(dim=-1), grouped.amax(dim=-1), bits, symmetric)
    return GroupGrids(grid.scale, grid.zero, bits, group_size, symmetric)


def rtn_quantized(weight: torch.Tensor, bits: int, group_size: int = 0,
                  symmetric: bool = True) -> tuple[torch.Tensor, GroupGrids]:
    """The fake-quantized float32 copy of ``weight`` and the grids it was rounded on."""
    grids = rtn_grids(weight, bits, group_size, symmetric)
    return grids.fake_quantize(weight.float()), grids


def rtn(weight: torch.Tensor, bits: int, group_size: int = 0, symmetric: bool = True) -> torch.Tensor:
    """Fake-quantized copy of ``weight`` [out, in] (float32)."""
    return rtn_quantized(weight, bits, group_size, symmetric)[0]
