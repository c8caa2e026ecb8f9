"""Run an aiohttp app on a loopback port in a thread of its own, for clients that block (schemathesis uses
`requests`): the app keeps serving while the test thread waits on a response."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

STARTUP_TIMEOUT_SECONDS = 60.0


class LiveServer:
    """The app's loop, runner and port; `base_url` is `http://127.0.0.1:<port>`."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name="live-app", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run_coroutine(self, coroutine: Any) -> Any:
        """Run a coroutine on the app's loop (e.g. a query on its database) and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(STARTUP_TIMEOUT_SECONDS)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT_SECONDS):
            raise RuntimeError("the app did not start")
        if self._error is not None:
            raise RuntimeError("the app failed to start") from self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(STARTUP_TIMEOUT_SECONDS)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        runner = web.AppRunner(self.app, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert isinstance(server, asyncio.base_events.Server)
            self.port = server.sockets[0].getsockname()[1]
            self._stop = asyncio.get_running_loop().create_future()
            self._ready.set()
            await self._stop
        finally:
            await runner.cleanup()


@contextmanager
def live_server(app: web.Application) -> Iterator[LiveServer]:
    server = LiveServer(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()
