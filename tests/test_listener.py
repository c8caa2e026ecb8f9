"""The listener `minichat serve` binds (listener.py): one readiness accepts every pending connection, on
asyncio and on uvloop (whose libuv accepts one per loop iteration); it serves aiohttp, stops accepting on
cleanup, and backs off when accept() runs out of descriptors."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from minichat_host import listener
from minichat_host.listener import AcceptAllServer, AcceptAllSite

pytestmark = pytest.mark.both_loops


class _Counting(asyncio.Protocol):
    made: list[asyncio.BaseTransport]

    def __init__(self, made: list[asyncio.BaseTransport], all_made: asyncio.Event, expected: int) -> None:
        self.made = made
        self._all_made = all_made
        self._expected = expected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)
        if len(self.made) == self._expected:
            self._all_made.set()


@pytest.fixture
async def listening() -> AsyncIterator[socket.socket]:
    sockets = await listener._bind("127.0.0.1", 0, backlog=128)
    assert len(sockets) == 1
    yield sockets[0]
    sockets[0].close()


def _connect_clients(port: int, count: int) -> list[socket.socket]:
    # Blocking connects complete in the kernel: the connections wait in the listening socket's backlog.
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]


def _close_all(
    server: AcceptAllServer, made: list[asyncio.BaseTransport], clients: list[socket.socket]
) -> None:
    for transport in made:
        transport.close()
    for client in clients:
        client.close()
    server.close()


async def test_one_readiness_accepts_every_pending_connection(listening: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    made: list[asyncio.BaseTransport] = []
    all_made = asyncio.Event()
    server = AcceptAllServer(loop, [listening], lambda: _Counting(made, all_made, 40))
    clients = _connect_clients(listening.getsockname()[1], 40)
    try:
        server._accept_pending(listening)  # what one readiness of the listening socket runs
        await asyncio.wait_for(all_made.wait(), 10)
        assert len(made) == 40
        # Nothing is left pending: another readiness accepts nothing.
        server._accept_pending(listening)
        await asyncio.sleep(0.05)
        assert len(made) == 40
    finally:
        _close_all(server, made, clients)
    assert server.sockets == ()
    assert listening.fileno() == -1  # closed with the server


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": "world"})


async def test_the_site_serves_aiohttp_and_stops_accepting_on_cleanup() -> None:
    app = web.Application()
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = AcceptAllSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site.port
    assert port > 0
    assert site.name == f"http://127.0.0.1:{port}"
    assert runner.addresses == [("127.0.0.1", port)]
    try:
        async with aiohttp.ClientSession() as session:
            # More connections at once than one loop iteration of libuv would let in.
            responses = await asyncio.gather(*(session.get(f"http://127.0.0.1:{port}/") for _ in range(32)))
            for response in responses:
                assert response.status == 200
                assert await response.json() == {"hello": "world"}
    finally:
        await runner.cleanup()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_a_port_in_use_fails_the_start_and_leaves_nothing_bound(listening: socket.socket) -> None:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        with pytest.raises(OSError) as raised:
            await AcceptAllSite(runner, "127.0.0.1", listening.getsockname()[1]).start()
        assert raised.value.errno == errno.EADDRINUSE
    finally:
        await runner.cleanup()


class _OutOfDescriptors:
    """A listening socket whose accept() fails as it does when the process has no descriptor left."""

    def accept(self) -> tuple[socket.socket, object]:
        raise OSError(errno.EMFILE, "Too many open files")


async def test_out_of_descriptors_stops_accepting_for_a_while_then_resumes(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(listener, "ACCEPT_RETRY_DELAY_SECONDS", 0.05)
    loop = asyncio.get_running_loop()
    made: list[asyncio.BaseTransport] = []
    all_made = asyncio.Event()
    server = AcceptAllServer(loop, [listening], lambda: _Counting(made, all_made, 1))
    await server.start_serving()
    assert server.is_serving()
    clients: list[socket.socket] = []
    try:
        server._accept_pending(_OutOfDescriptors())  # type: ignore[arg-type]
        assert not server.is_serving()  # not spinning on a socket that stays readable
        assert "not accepting for" in caplog.text
        clients = _connect_clients(listening.getsockname()[1], 1)  # waits in the backlog meanwhile
        await asyncio.wait_for(all_made.wait(), 10)  # accepted once the pause is over
        assert server.is_serving()
    finally:
        _close_all(server, made, clients)
    assert not server.is_serving()
