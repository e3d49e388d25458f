"""A standalone HTML report: every figure (plotly, inlined so it works offline) and the key tables."""
from __future__ import annotations

import html
import time

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

STYLE = """
body { font-family: Inter, system-ui, sans-serif; max-width: 1200px; margin: 2rem auto; color: #1e293b; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #e2e8f0; padding-bottom: 0.3rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.8rem 0; }
td, th { border: 1px solid #e2e8f0; padding: 0.25rem 0.6rem; text-align: left; }
th { background: #f1f5f9; } .note { color: #475569; }
"""


def section(title: str, notes: list[str] = (), tables: list[pd.DataFrame] = (), figures: list[go.Figure] = ()) -> str:
    parts = [f"<h2>{html.escape(title)}</h2>"]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    parts += [table.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}") for table in tables]
    parts += [figure.to_html(full_html=False, include_plotlyjs=False) for figure in figures]
    return "\n".join(parts)


def render(title: str, subtitle: str, sections: list[str]) -> str:
    """One self-contained page (plotly.js inlined: ~4 MB, no network needed to view it)."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script>{plotly.offline.get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(subtitle)} · {time.strftime('%Y-%m-%d %H:%M')}</p>"
        + "\n".join(sections) + "</body></html>"
    )
