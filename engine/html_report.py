"""A standalone HTML report: every figure (plotly, embedded so it works offline) and the key tables.

plotly.js alone is 4.8 MB of JavaScript. The page carries it once, gzipped and base85-encoded (1.8 MB),
with every figure's data in a second such blob; a few lines of script decompress both with the
browser's own DecompressionStream and draw the figures. Tables are plain HTML: they read without
JavaScript.
"""
from __future__ import annotations

import base64
import gzip
import html
import json
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.offline

STYLE = """
body { font-family: Inter, system-ui, sans-serif; max-width: 1200px; margin: 2rem auto; color: #1e293b; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #e2e8f0; padding-bottom: 0.3rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.8rem 0; }
td, th { border: 1px solid #e2e8f0; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f1f5f9; } .note { color: #475569; } .cs-figure { min-height: 380px; }
"""
# Decodes the blobs (RFC 1924 base85 of gzip), loads plotly.js, draws each figure into its div.
LOADER = """
const A = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~";
function b85(text, size) {
  const value = new Int32Array(128); for (let i = 0; i < 85; i++) value[A.charCodeAt(i)] = i;
  const out = new Uint8Array(text.length / 5 * 4);
  for (let i = 0, o = 0; i < text.length; i += 5, o += 4) {
    let v = 0; for (let j = 0; j < 5; j++) v = v * 85 + value[text.charCodeAt(i + j)];
    out[o] = Math.floor(v / 16777216) % 256; out[o + 1] = Math.floor(v / 65536) % 256;
    out[o + 2] = Math.floor(v / 256) % 256; out[o + 3] = v % 256;
  }
  return out.subarray(0, size);
}
async function gunzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return await new Response(stream).text();
}
(async () => {
  const code = document.createElement("script");
  code.text = await gunzip(b85(PLOTLY[0], PLOTLY[1]));
  document.head.appendChild(code);
  const figures = JSON.parse(await gunzip(b85(FIGURES[0], FIGURES[1])));
  figures.forEach((figure, i) => Plotly.newPlot("cs-figure-" + i, figure.data, figure.layout, {responsive: true}));
  document.body.dataset.figuresDrawn = figures.length;
})();
"""


@dataclass
class Section:
    """A titled part of the report: notes, tables, figures, in that order."""

    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    figures: list[go.Figure] = field(default_factory=list)


def section(title: str, notes: list[str] = (), tables: list[pd.DataFrame] = (), figures: list[go.Figure] = ()) -> Section:
    return Section(title, list(notes), list(tables), [figure for figure in figures if figure is not None])


def _blob(data: bytes) -> list:
    """[base85 text, byte length] of gzipped ``data`` (the loader's input)."""
    packed = gzip.compress(data, compresslevel=9, mtime=0)
    return [base64.b85encode(packed, pad=True).decode("ascii"), len(packed)]


def _single_precision(value):
    """plotly's float64 arrays ({"dtype": "f8", "bdata": base64}) as float32 ones: half the bytes,
    seven significant digits, far more than a figure shows."""
    if isinstance(value, dict):
        if value.get("dtype") == "f8" and isinstance(value.get("bdata"), str):
            data = np.frombuffer(base64.b64decode(value["bdata"]), dtype="<f8").astype("<f4")
            return {**value, "dtype": "f4", "bdata": base64.b64encode(data.tobytes()).decode("ascii")}
        return {key: _single_precision(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_single_precision(item) for item in value]
    return value


def _section_html(part: Section, first_figure: int) -> str:
    parts = [f"<h2>{html.escape(part.title)}</h2>"]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in part.notes]
    parts += [table.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}") for table in part.tables]
    parts += [f'<div class="cs-figure" id="cs-figure-{first_figure + i}"></div>' for i in range(len(part.figures))]
    return "\n".join(parts)


def render(title: str, subtitle: str, sections: list[Section]) -> str:
    """One self-contained page: no network needed to view it."""
    bodies, figures = [], []
    for part in sections:
        bodies.append(_section_html(part, len(figures)))
        figures += [_single_precision(json.loads(figure.to_json())) for figure in part.figures]
    payload = (f"const PLOTLY = {json.dumps(_blob(plotly.offline.get_plotlyjs().encode()))};\n"
               f"const FIGURES = {json.dumps(_blob(json.dumps(figures, separators=(',', ':')).encode()))};\n")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(subtitle)} · {time.strftime('%Y-%m-%d %H:%M')}</p>"
        + "\n".join(bodies) + f"<script>{payload}{LOADER}</script></body></html>"
    )
