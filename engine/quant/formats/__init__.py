"""Number formats and their grids: integer grids per group or channel (grid.py), FP8, NVFP4 and
MXFP4 rounded as compressed-tensors rounds them (floats.py), round to nearest (rtn.py)."""
