"""The dashboard's look: one theme and a little CSS, applied at launch (Gradio 6)."""
from __future__ import annotations

import gradio as gr

CSS = """
.gradio-container { max-width: 1280px !important; margin: auto; }
#cs-header h1 { margin-bottom: 0; font-size: 1.7rem; letter-spacing: -0.01em; }
#cs-header p { margin-top: 0.2rem; color: var(--body-text-color-subdued); }
.cs-status { min-height: 2.2rem; padding: 0.4rem 0.7rem; border-radius: 8px;
             background: var(--background-fill-secondary); }
.cs-section-title { font-weight: 600; margin-bottom: 0.2rem; }
footer { display: none !important; }
"""


def theme() -> gr.themes.Base:
    return gr.themes.Soft(
        primary_hue="indigo",
        secondary_hue="sky",
        neutral_hue="slate",
        # System fonts only: no web-font download, so the page renders the same offline.
        font=[gr.themes.Font(name) for name in ("Inter", "system-ui", "Segoe UI", "sans-serif")],
    ).set(block_radius="10px", button_large_radius="8px")
