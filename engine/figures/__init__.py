"""Pure plotly figure builders: results in, ``go.Figure`` out. No gradio, no I/O."""
from engine.figures.calibration import bucket_bars, length_histogram

__all__ = ["bucket_bars", "length_histogram"]
