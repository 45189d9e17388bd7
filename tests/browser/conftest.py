"""Fixtures for the browser tests: a real JupyterLab server, a real Chromium, real clicks.

- `lab_server` (session): JupyterLab on a temporary copy of notebooks/ (see lab_driver.py); shut
  down, kernels first, at the end of the session, even after a failure.
- `browser` (session): Debian's Chromium (`/usr/bin/chromium`) driven by Playwright for Python,
  headless (Playwright's own browser download does not work on these machines).
- `lab`: a fresh browser context (no cookies, no state) with a `LabPage`; on failure it saves a
  screenshot, and it always shuts down the notebook's kernel and closes the context.

Every test here is skipped, with the reason, when Playwright or Chromium is missing; `make test`
installs both where it can (.ci/install_browser_deps.sh). Artefacts: artifacts/browser/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lab_driver import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_FLAGS,
    PAGE_TIMEOUT_MS,
    VIEWPORT,
    LabPage,
    missing_requirement,
    start_lab_server,
    stop_lab_server,
)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    reason = missing_requirement()
    if reason is None:
        return
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=f"browser test skipped: {reason}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the item, so that the `lab` fixture knows if the test failed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory, artifacts):
    server = start_lab_server(tmp_path_factory.mktemp("jupyterlab"), artifacts / "jupyterlab.log")
    try:
        yield server
    finally:
        stop_lab_server(server)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def lab(browser, lab_server, artifacts, request):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name).strip("_")
    lab_page = LabPage(context.new_page(), lab_server, artifacts, prefix=prefix)
    try:
        yield lab_page
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            path = lab_page.screenshot("failure", full_page=True)
            print(f"failure screenshot: {path}; server log: {lab_server.log}")
            if lab_page.page_errors:
                print("JavaScript errors on the page:\n" + "\n".join(lab_page.page_errors))
        lab_page.close_notebook()
        context.close()
