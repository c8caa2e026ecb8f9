"""Fixtures for the web console tests: the real app on a loopback port and headless Chromium.

- `console_app` (module): `create_app` on SQLite in a temp directory with the bundled plugins and the
  local provider, which waits `LOCAL_TOKEN_DELAY_SECONDS` before each word so that a reply streams over
  a visible stretch of time and a Stop lands mid-stream.
- `browser` (module): Debian's Chromium (installed by `ensure_chromium` when missing) driven by Playwright
  with a fresh user data directory. When Chromium cannot be provided or launched the test fails with the
  reason; it is never skipped.
- `page` (function): a new tab on the console, with uncaught page errors and Content-Security-Policy
  violations turned into a test error, and a screenshot of the final state saved as an artifact.
- `artifacts_dir` (session): screenshots go to `$MINICHAT_TEST_ARTIFACTS` when set, else to a pytest
  temporary directory (its path is recorded as the `artifacts` property of each test).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from console.browser import CHROMIUM_ARGS, BrowserUnavailable, ServedApp, ensure_chromium
from minichat_host.testing import make_config

ARTIFACTS_ENV: Final = "MINICHAT_TEST_ARTIFACTS"
LOCAL_TOKEN_DELAY_SECONDS: Final = 0.05


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get(ARTIFACTS_ENV)
    path = Path(configured) if configured else tmp_path_factory.mktemp("console-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def console_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    data_dir = tmp_path_factory.mktemp("console-data")
    config = make_config(
        data_dir,
        {
            "server": {"web_console": True},
            "database": {"url": f"sqlite+aiosqlite:///{data_dir / 'minichat.db'}", "pool_max_size": 4},
            # The local model pauses between words so a Stop can land mid-stream.
            "streaming": {"local_token_delay_seconds": LOCAL_TOKEN_DELAY_SECONDS},
        },
    )
    served = ServedApp(config)
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(f"Playwright for Python is not installed ({exc}); run: pip install -e '.[test]'")
    try:
        executable = ensure_chromium()
    except BrowserUnavailable as exc:
        pytest.fail(f"cannot run the web console tests: {exc}")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        try:
            context = playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=str(executable),
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1280, "height": 900},
            )
        except PlaywrightError as exc:
            pytest.fail(f"cannot launch {executable} for the web console tests: {exc}")
        try:
            yield context
        finally:
            context.close()


class PageProblems:
    """Uncaught exceptions and CSP violations seen by one page."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def on_page_error(self, error: Any) -> None:
        self.items.append(f"uncaught: {error}")

    def on_console(self, message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.items.append(f"CSP: {message.text}")


@pytest.fixture
def page(
    browser: Any,
    console_app: ServedApp,
    artifacts_dir: Path,
    request: pytest.FixtureRequest,
    record_property: Any,
) -> Iterator[Any]:
    tab = browser.new_page()
    problems = PageProblems()
    tab.on("pageerror", problems.on_page_error)
    tab.on("console", problems.on_console)
    # Confirmation dialogs (delete turn / chat, discard) are answered "yes".
    tab.on("dialog", lambda dialog: dialog.accept())
    tab.set_default_timeout(20_000)
    record_property("artifacts", str(artifacts_dir))
    try:
        yield tab
    finally:
        tab.screenshot(path=str(artifacts_dir / f"{request.node.name}-final.png"), full_page=True)
        tab.close()
    assert not problems.items, f"the console page reported problems: {problems.items}"
