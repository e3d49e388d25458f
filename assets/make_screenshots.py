"""Screenshots of the real dashboard for the README: launch it, click through, capture each tab.

Usage: python assets/make_screenshots.py [--model builtin:gemma-3-270m]
Needs Debian's chromium and the playwright package (pip install -e ".[test]").
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.browser import chromium_page, served_app  # noqa: E402
from ui.limits import Limits  # noqa: E402

OUT = ROOT / "assets" / "screenshots"
# (tab, button to click, text that appears when done, file name)
STEPS = [
    ("Dataset", "Build calibration set", "Built ", "dataset.png"),
    ("Activation ranges", "Collect statistics", "Collected ", "activations.png"),
    ("Hessians", "Collect Hessians", "Collected Hessians", "hessians.png"),
    ("Sensitivity", "Run sweep", "Swept ", "sensitivity.png"),
    ("Quantize", "Quantize and evaluate", "GPTQ: perplexity", "quantize.png"),
    ("Compare", "Run comparison", "Compared ", "compare.png"),
    ("Export", "Prepare downloads", "Ready", "export.png"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin:gemma-3-270m")
    parser.add_argument("--only", nargs="*", default=None, metavar="FILE",
                        help="capture only these files (every step still runs up to the last of them)")
    args = parser.parse_args()
    wanted = set(args.only) if args.only else {step[-1] for step in STEPS} | {"model-data.png"}
    last = max(i for i, step in enumerate(STEPS) if step[-1] in wanted or not args.only)
    OUT.mkdir(parents=True, exist_ok=True)
    with served_app(limits=Limits(), default_model=args.model) as url, chromium_page(1400, 1000) as page:
        page.goto(url)
        page.get_by_role("button", name="Load model and corpus").click()
        page.wait_for_function("() => document.body.innerText.includes('Loaded ')", timeout=300_000)
        page.wait_for_timeout(1000)
        if "model-data.png" in wanted:
            page.screenshot(path=str(OUT / "model-data.png"), full_page=True)
        for tab, button, done, name in STEPS[:last + 1]:
            page.get_by_role("tab", name=tab).click()
            page.get_by_role("button", name=button).click()
            page.wait_for_function(f"() => document.body.innerText.includes('{done}')", timeout=1_800_000)
            page.wait_for_timeout(2000)
            if name in wanted:
                page.screenshot(path=str(OUT / name), full_page=True)
    print(f"wrote {', '.join(sorted(wanted))} in {OUT}")


if __name__ == "__main__":
    main()
