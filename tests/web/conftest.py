"""Browser fixtures: a real server process (tiny preset) and headless Debian Chromium driven by Playwright.
Browser tests skip cleanly when /usr/bin/chromium or the playwright package is missing."""
import os

import pytest

from server.testing import server_process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def pytest_collection_modifyitems(config, items):
    reason = None
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is missing (pip install playwright)"
    for item in items:
        if "browser" in item.keywords and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    log = tmp_path_factory.mktemp("web") / "server.log"
    with server_process("--gradio", "0", "--action_guidance", "2", log_path=log) as url:  # flights run guided
        yield url


@pytest.fixture(scope="module")
def causal_url(tmp_path_factory):
    """The random preset served causally: one stream per flight, a block of 4 frames per chunk message."""
    log = tmp_path_factory.mktemp("web") / "server-causal.log"
    with server_process("--gradio", "0", "--generation", "causal", log_path=log) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors
