"""Helpers for driving the real app in headless Chromium (Debian's chromium via Playwright)."""
from __future__ import annotations

import shutil
import socket
from contextlib import contextmanager

from tests.conftest import missing

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def served_app(**build_kwargs):
    """Launch the dashboard on a free local port; yield its URL; close it afterwards."""
    from ui.app import build_app
    from ui.theme import CSS, theme

    app = build_app(**build_kwargs)
    app.queue(default_concurrency_limit=2)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, theme=theme(), css=CSS)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.close()


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000):
    try:
        import playwright.sync_api as playwright_api
    except ImportError:
        missing("playwright is not installed (pip install -e '.[test]')")
    if not shutil.which("chromium") and not shutil.os.path.exists(CHROMIUM):
        missing("Debian's chromium is not installed (apt-get install chromium)")
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()
