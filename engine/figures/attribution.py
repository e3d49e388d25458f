"""The attribution drill-down as HTML: the sample's text with the token that set the maximum marked."""
from __future__ import annotations

import html

from engine.stats import Attribution


def attribution_html(found: Attribution) -> str:
    def show(text: str) -> str:
        return html.escape(text).replace("\n", "⏎<br>")

    return (
        '<div class="cs-attribution">'
        f"<p><b>{html.escape(found.key)}</b>, channel {found.channel}: |x| = <b>{found.value:.4g}</b> "
        f"at token {found.position} of sample {found.row} ({html.escape(found.source)})</p>"
        '<p style="font-family: ui-monospace, monospace; line-height: 1.6">'
        f'{show(found.before)}<mark style="background:#fde68a; padding:0 2px; border-radius:3px" title="sets the max">'
        f"{show(found.token) or '∅'}</mark>{show(found.after)}</p></div>"
    )
