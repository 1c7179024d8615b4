"""Headless Chromium for report tests: the `browser` fixture (Debian's chromium driven by playwright,
never a downloaded browser) and a page check (no console errors, nothing fetched from the network,
charts drawn, a real screenshot). In CI (CI=true) a missing browser fails the test instead of
skipping it.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _unavailable(why: str):
    message = f"headless browser check cannot run: {why}"
    if _in_ci():
        pytest.fail(message + " (CI must run it: .ci/run installs Debian's chromium, the dev extra playwright)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser():
    executable = os.environ.get("OPSCTL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not executable:
        _unavailable("no chromium on PATH (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def open_in_browser(browser, html: Path, screenshot: Path, min_charts: int) -> dict:
    """Load the page from file://, wait for the charts, screenshot it; report what went wrong."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors, requests, dialogs = [], [], []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.route(re.compile(r"^(https?|wss?)://"), lambda route: route.abort())  # offline, and never hang
    try:
        page.goto(html.resolve().as_uri(), wait_until="load")
        page.wait_for_function(
            f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {min_charts}", timeout=30_000)
        charts = page.evaluate("""() => [...document.querySelectorAll('.js-plotly-plot')].map(el => ({
            id: el.id, traces: (el.data || []).length, svgs: el.querySelectorAll('.main-svg').length,
            marks: el.querySelectorAll('.point, .trace path, .boxlayer path, .scatterlayer .js-line').length}))""")
        text = page.inner_text("body")
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    return dict(errors=errors, requests=requests, dialogs=dialogs, charts=charts, text=text)


def check_page(seen: dict, screenshot: Path, chart_ids: set[str]) -> None:
    assert not seen["errors"], seen["errors"]
    assert not seen["dialogs"], f"script from the data ran: {seen['dialogs']}"
    remote = [u for u in seen["requests"] if not u.startswith(("file://", "data:", "blob:"))]
    assert not remote, f"the page reached for the network: {remote}"
    drawn = {c["id"]: c for c in seen["charts"]}
    assert chart_ids <= set(drawn), (chart_ids, sorted(drawn))
    for chart_id in chart_ids:
        chart = drawn[chart_id]
        assert chart["traces"] > 0 and chart["svgs"] >= 1 and chart["marks"] > 0, chart
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 50_000, screenshot.stat().st_size


