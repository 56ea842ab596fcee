"""The browser for browser tests: Debian's Chromium driven by Playwright, one page per test."""
from __future__ import annotations

import os

import pytest

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def page(web_server, tmp_path, monkeypatch):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed")
    # Playwright's sync API runs an event loop in the test's thread; the tests' ORM calls happen
    # while no browser call is in flight. For this test only: the variable must not leak into the
    # processes other tests start (`check --deploy` refuses it).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        context = browser.new_context(base_url=web_server, viewport={"width": 1280, "height": 900})
        yield context.new_page()
        context.close()
        browser.close()
