"""Pure plotly figure builders: results in, ``go.Figure`` out. No gradio, no I/O."""
from engine.figures.attribution import attribution_html
from engine.figures.calibration import bucket_bars, length_histogram
from engine.figures.coverage import expert_token_heatmap, outlier_coverage
from engine.figures.formats import format_ranges_across_depth
from engine.figures.hessians import diagonal_heatmap, eigen_spectrum, hessian_depth
from engine.figures.imatrix import (
    channel_importance,
    comparison_figure,
    concentration,
    concentration_heatmap,
    expert_counts,
    top_channels,
)
from engine.figures.kv_cache import kv_cache_ranges, position_share
from engine.figures.quant import (
    divergence_runs,
    has_sensitivity,
    mixed_allocation,
    perplexity_runs,
    run_label,
    scheme_label,
    sensitivity_depth,
)
from engine.figures.rotation import rotation_ranges
from engine.figures.selection import SWEEP_METRICS, comparison_bars, selection_scatter, sweep_curves
from engine.figures.stats import (
    channel_heatmap,
    layer_channels,
    layer_distributions,
    outlier_table,
    ranges_across_depth,
    short_name,
)

__all__ = [
    "SWEEP_METRICS",
    "attribution_html",
    "bucket_bars",
    "channel_heatmap",
    "channel_importance",
    "comparison_bars",
    "comparison_figure",
    "concentration",
    "concentration_heatmap",
    "diagonal_heatmap",
    "divergence_runs",
    "eigen_spectrum",
    "expert_counts",
    "expert_token_heatmap",
    "format_ranges_across_depth",
    "has_sensitivity",
    "hessian_depth",
    "kv_cache_ranges",
    "layer_channels",
    "layer_distributions",
    "length_histogram",
    "mixed_allocation",
    "outlier_coverage",
    "outlier_table",
    "perplexity_runs",
    "position_share",
    "ranges_across_depth",
    "rotation_ranges",
    "run_label",
    "scheme_label",
    "selection_scatter",
    "sensitivity_depth",
    "short_name",
    "sweep_curves",
    "top_channels",
]
