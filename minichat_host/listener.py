"""The TCP listener `minichat serve` binds: every pending connection is accepted at each readiness.

libuv (uvloop's core) accepts one connection per loop iteration since libuv 1.45 (libuv/libuv#3696). Under
load one iteration of the loop takes 10-25 ms, so a burst of 64 new connections (a client pool opening, a
load balancer reconnecting) was let in over 0.4-1 s, and their first requests waited that long: a 150-500 ms
tail on the hot endpoints with `server.event_loop: uvloop` (bench/api.py, wrk at 64 connections; seen on a
bare aiohttp app too, MagicStack/uvloop#123). asyncio's own loop accepts up to the backlog per readiness,
which is what `AcceptAllSite` does on any loop: the listening socket is watched with `add_reader`, drained
with `accept()` until it would block, and each connection is handed to the loop's transport through
`connect_accepted_socket`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from minichat_host.scheduling import start_eagerly

log = logging.getLogger("minichat.listener")

# What asyncio's loop does when accept() fails for lack of descriptors or memory: stop accepting for a
# second (the backlog holds the connections meanwhile) instead of spinning on a socket that stays readable.
ACCEPT_RETRY_DELAY_SECONDS = 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptAllServer(asyncio.AbstractServer):
    """Listening sockets whose readiness accepts everything pending, for `AcceptAllSite`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.Protocol],
    ) -> None:
        self._loop = loop
        self._sockets = sockets
        self._protocol_factory = protocol_factory
        self._serving = False
        self._retry: asyncio.TimerHandle | None = None
        # Connections being set up (a task each until the transport calls `connection_made`).
        self._connecting: set[asyncio.Task[Any]] = set()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self._watch()

    async def serve_forever(self) -> None:
        self._watch()
        await self._loop.create_future()  # until cancelled

    def close(self) -> None:
        self._unwatch()
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    async def wait_closed(self) -> None:
        # The accepted connections belong to aiohttp's server, which closes them on shutdown.
        if self._connecting:
            await asyncio.gather(*self._connecting, return_exceptions=True)

    def close_clients(self) -> None:  # AbstractServer since Python 3.13; aiohttp closes its connections
        pass

    def abort_clients(self) -> None:
        pass

    def _watch(self) -> None:
        if self._serving or not self._sockets:
            return
        self._serving = True
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept_pending, sock)

    def _unwatch(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self._serving:
            return
        self._serving = False
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())

    def _accept_pending(self, listening: socket.socket) -> None:
        """Accept every connection waiting on `listening` (called when it is readable)."""
        while True:
            try:
                conn, _ = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up before it was accepted
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    log.error(
                        "accept() failed (%s): not accepting for %.0f s", exc, ACCEPT_RETRY_DELAY_SECONDS
                    )
                    self._unwatch()
                    self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY_SECONDS, self._resume)
                    return
                log.error("accept() failed: %s", exc)
                return
            conn.setblocking(False)
            self._connect(conn)

    def _resume(self) -> None:
        self._retry = None
        self._watch()

    def _connect(self, conn: socket.socket) -> None:
        setup = self._loop.connect_accepted_socket(self._protocol_factory, conn)
        task = start_eagerly(self._loop, setup)  # the transport reads from this step on
        if task.done():
            self._connected(task)
            return
        self._connecting.add(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        self._connecting.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("an accepted connection could not be set up: %s", exc)


async def _bind(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for `host` (every address it resolves to; all interfaces when empty), as asyncio's
    `create_server` makes them: SO_REUSEADDR, IPv6 sockets IPv6-only, non-blocking."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class AcceptAllSite(web.BaseSite):
    """aiohttp's `TCPSite`, with `AcceptAllServer` as its server."""

    __slots__ = ("_bound_port", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *, backlog: int = 128) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._bound_port: int | None = None

    @property
    def port(self) -> int:
        return self._bound_port if self._bound_port is not None else self._port

    @property
    def name(self) -> str:
        host = self._host or "0.0.0.0"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        protocol_factory = self._runner.server
        assert protocol_factory is not None
        sockets = await _bind(self._host, self._port, self._backlog)
        self._bound_port = sockets[0].getsockname()[1]
        server = AcceptAllServer(asyncio.get_running_loop(), sockets, protocol_factory)
        server._watch()
        self._server = server
