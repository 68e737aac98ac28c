"""A real headless Chromium for the playground tests (Playwright driving Debian's ``chromium``).

Playwright's own browser download is not used (and not reachable here): the
browser is the system ``chromium``, which ``make install`` installs. Without it
(or without the ``playwright`` package) the browser tests skip, except under
``CI=true``, where they fail with the install hint: CI must not go green
without running them.

Pages get a fresh browser context each (new profile state, empty
``sessionStorage``); every console error, uncaught exception and request URL
is recorded, so tests can assert a clean console and loopback-only traffic.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest

INSTALL_HINT = (
    "the browser tests need Debian's chromium and the playwright package: run `make install` "
    "(it runs `apt-get install -y chromium` when `command -v chromium` finds none)"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_or_skip() -> str:
    """The chromium executable; skip without it (fail under ``CI=true``)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(INSTALL_HINT, pytrace=False)
        pytest.skip(INSTALL_HINT)
    return path


@contextmanager
def launch_chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright ``Browser``), closed on exit."""
    path = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright gives each launch a fresh temporary --user-data-dir.
        browser = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """A page plus what it logged: console errors, page errors and the URLs it requested."""

    page: Any
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def wait(self, expression: str, what: str, timeout: float = 120.0) -> Any:
        """Poll a JS expression until truthy (``page.wait_for_function`` would need 'unsafe-eval' under our CSP)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.page.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({expression}); console errors: {self.errors}")
            time.sleep(0.05)

    def ready(self) -> None:
        """Wait until the page has loaded the model and vectors (or shown why not)."""
        self.wait("document.body.dataset.ready", "the page to finish loading")

    def idle(self) -> None:
        """Wait until no completion, sweep cell or button is busy."""
        self.wait("document.querySelectorAll('.busy, button:disabled').length === 0", "requests to finish")

    def foreign_hosts(self) -> set[str]:
        return {urlsplit(u).hostname or u for u in self.urls if urlsplit(u).hostname != "127.0.0.1" and not u.startswith("data:")}


@contextmanager
def open_tab(browser: Any, url: str, *, width: int = 1280, height: int = 800) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    tab = Tab(page)
    page.on("console", lambda msg: tab.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: tab.errors.append(f"uncaught: {exc}"))
    page.on("request", lambda request: tab.urls.append(request.url))
    try:
        page.goto(url)
        tab.ready()
        yield tab
    finally:
        context.close()
