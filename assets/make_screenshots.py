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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="builtin:gemma-3-270m")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with served_app(limits=Limits(), default_model=args.model) as url, chromium_page(1400, 1000) as page:
        page.goto(url)
        page.get_by_role("button", name="Load model and corpus").click()
        page.wait_for_function("() => document.body.innerText.includes('Loaded ')", timeout=300_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(OUT / "model-data.png"), full_page=True)
        page.get_by_role("tab", name="Dataset").click()
        page.get_by_role("button", name="Build calibration set").click()
        page.wait_for_function("() => document.body.innerText.includes('Built ')", timeout=300_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(OUT / "dataset.png"), full_page=True)
        page.get_by_role("tab", name="Activation ranges").click()
        page.get_by_role("button", name="Collect statistics").click()
        page.wait_for_function("() => document.body.innerText.includes('Collected ')", timeout=600_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(OUT / "activations.png"), full_page=True)
        page.get_by_role("tab", name="Hessians").click()
        page.get_by_role("button", name="Collect Hessians").click()
        page.wait_for_function("() => document.body.innerText.includes('Collected Hessians')", timeout=600_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(OUT / "hessians.png"), full_page=True)
    print(f"wrote {OUT}/model-data.png, dataset.png, activations.png and hessians.png")


if __name__ == "__main__":
    main()
