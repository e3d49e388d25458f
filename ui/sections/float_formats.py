"""Activation ranges tab, float formats: is this set good for FP8 and NVFP4? What each calibration
method would set per layer input, from the statistics collected above (no new pass)."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from engine.figures import format_ranges_across_depth, short_name
from engine.progress import Progress, no_progress
from engine.quant import format_ranges
from ui.context import AppContext
from ui.state import Session
from ui.tables import shown
from ui.widgets import result_plot, result_table
from ui.wiring import connect

COLUMNS = {"fp8_percentile": "FP8 p99.99", "fp8_mse": "FP8 MSE", "fp8_entropy": "FP8 entropy",
           "nvfp4_headroom": "NVFP4 headroom", "block_spread": "block spread"}


@dataclass(frozen=True)
class FormatsForm:
    """The section has no settings of its own: it reads the session's statistics."""


def summary(table: pd.DataFrame) -> str:
    """What the table says, in three lines."""
    lines = [(f"**FP8 and NVFP4 on this set** ({len(table)} distinct inputs; ranges as multiples of each input's |max|, "
              "1 = minmax):")]
    if "fp8_entropy" in table:
        lines.append(f"- FP8 static ranges: entropy keeps {table['fp8_entropy'].median():.2f}x |max| (median; lowest "
                     f"{table['fp8_entropy'].min():.2f}x), MSE {table['fp8_mse'].median():.2f}x, p99.99 "
                     f"{table['fp8_percentile'].median():.2f}x: FP8's float steps make clipping worth little")
    if "block_spread" in table and table["block_spread"].notna().any():
        beyond = table[table["beyond_fp8_range"].fillna(False).astype(bool)]
        where = (f": {', '.join(short_name(key) for key in beyond['key'].head(4))}" if len(beyond) else
                 "; one NVFP4 global scale holds every input's blocks")
        lines.append(f"- NVFP4: headroom sets amax {table['nvfp4_headroom'].min():.3g}-{table['nvfp4_headroom'].max():.3g}x "
                     f"|max| (room for activations above what this set reached); blocks spread up to "
                     f"{table['block_spread'].max():,.0f}x, {len(beyond)} of {len(table)} beyond e4m3's 28,672{where}")
    else:
        lines.append("- NVFP4: no input here has 16-channel blocks in these statistics (collect them again with this "
                     "calibscope, or the widths are not multiples of 16)")
    return "\n".join(lines)


def measure_formats(form: FormatsForm, session: Session, context: AppContext, progress: Progress = no_progress) -> dict:
    stats = session.require("stats")
    progress(0.1, "FP8 and NVFP4 ranges per input")
    table = format_ranges(stats)
    shown_table = table.assign(layer=[short_name(key) for key in table["key"]])
    columns = ["layer", "absmax", *(c for c in COLUMNS if c in table),
               *(["beyond_fp8_range"] if "beyond_fp8_range" in table else [])]
    formats = {"absmax": ".4g", **{c: ".3g" for c in COLUMNS}}
    return {"status": summary(table), "figure": format_ranges_across_depth(table),
            "table": shown(shown_table[columns], formats, flags=("beyond_fp8_range",),
                           headers={**COLUMNS, "beyond_fp8_range": "beyond e4m3"})}


def build_section(session: gr.State, context: AppContext) -> None:
    gr.Markdown("### FP8 and NVFP4\nWhat each calibration method would set for FP8 static inputs and NVFP4's global "
                "scale, per layer input, from the statistics above; and whether each input's 16-channel blocks fit "
                "one NVFP4 global scale. Choose the method in the Quantize tab.")
    run = gr.Button("Measure FP8 and NVFP4 ranges")
    status = gr.Markdown("", elem_classes="cs-status")
    figure = result_plot()
    table = result_table("Per input (multiples of |max|; sortable)", max_height=320)
    connect(run.click, measure_formats, FormatsForm, {}, session, {"status": status, "figure": figure, "table": table}, context,
            api_name="float_formats", status=status)
