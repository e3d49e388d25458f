"""Pure plotly figure builders: results in, ``go.Figure`` out. No gradio, no I/O."""
from engine.figures.attribution import attribution_html
from engine.figures.calibration import bucket_bars, length_histogram
from engine.figures.hessians import diagonal_heatmap, eigen_spectrum, hessian_depth
from engine.figures.stats import (
    channel_heatmap,
    layer_channels,
    layer_distributions,
    outlier_table,
    ranges_across_depth,
)

__all__ = [
    "attribution_html",
    "bucket_bars",
    "channel_heatmap",
    "diagonal_heatmap",
    "eigen_spectrum",
    "hessian_depth",
    "layer_channels",
    "layer_distributions",
    "length_histogram",
    "outlier_table",
    "ranges_across_depth",
]
