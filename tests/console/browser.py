"""Headless Chromium for the console tests, and the real app served on a loopback port.

- `ensure_chromium()`: Debian's `/usr/bin/chromium`, installed with apt-get only when it is missing (as
  tests/pg.py does for PostgreSQL). Playwright drives that binary through `executable_path`; its own
  browser download (`playwright install`) is never used: this machine reaches no browser CDN.
- `ServedApp`: `create_app(config)` on 127.0.0.1 with an ephemeral port, running its own event loop in a
  background thread, so the synchronous Playwright API can drive it from the test thread.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Final

from aiohttp import web

from minichat_host.app import create_app
from minichat_host.config import Config

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_TIMEOUT_SECONDS: Final = 900
SERVER_START_TIMEOUT_SECONDS: Final = 60
SERVER_STOP_TIMEOUT_SECONDS: Final = 30


class BrowserUnavailable(RuntimeError):
    """Chromium is missing and could not be installed; the message says why."""


def ensure_chromium() -> Path:
    """The Chromium binary, installing the Debian `chromium` package when it is absent."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BrowserUnavailable(
            f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get): "
            "install the Debian `chromium` package to run the web console tests"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS, check=False
        )
        if result.returncode != 0:
            raise BrowserUnavailable(
                f"{shlex.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
    if not CHROMIUM.exists():
        raise BrowserUnavailable(f"installed the chromium package but {CHROMIUM} does not exist")
    return CHROMIUM


class ServedApp:
    """The real application on `http://127.0.0.1:<port>`, started and stopped from a synchronous test."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._thread = threading.Thread(target=self._run, name="console-test-server", daemon=True)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(SERVER_START_TIMEOUT_SECONDS):
            raise RuntimeError("the minichat app did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the minichat app failed to start: {self._error!r}") from self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(SERVER_STOP_TIMEOUT_SECONDS)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(create_app(self._config), handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
