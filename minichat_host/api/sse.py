"""The SSE writer: turns a domain `TurnStream` into a `text/event-stream` response.

Frames go out as `event: <name>\\ndata: <compact JSON>\\n\\n`, each written as soon as the domain yields it.
The response is aiohttp-sse's `EventSourceResponse` (POST allowed, `Cache-Control: no-cache`, chunked,
`X-Accel-Buffering: no`, a send timeout that aborts a stalled client, and `: ping` comments as a keep-alive
once the domain's own `ping` events stop after the first token). After the one terminal event the response
ends. A client that goes away (a failed write, the transport closing while the turn waits on the model, or
the handler being cancelled) detaches the stream, which cancels the provider call; the turn is then
finalized `cancelled` by the domain, independently of this request.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import msgspec
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from minichat_host.api.problems import REQUEST_ID_KEY
from minichat_host.domain.turns import TurnStream

log = logging.getLogger("minichat.api.sse")

# SSE comment keep-alive, for proxies that drop idle connections after the first token (original: 30 s).
COMMENT_KEEPALIVE_SECONDS: Final = 30.0
# How often a stream waiting on the model checks whether its client is still connected.
DISCONNECT_POLL_SECONDS: Final = 0.5
SEND_TIMEOUT_SECONDS: Final = 120.0

_encoder = msgspec.json.Encoder()


class _DisconnectWatch:
    """Detach the stream as soon as the client's connection is gone, even while nothing is written.

    A timer that re-arms itself rather than a task per stream: a sleeping task costs its coroutine frames
    (bench/memory.py counts RSS per idle stream), a timer handle a few hundred bytes.
    """

    __slots__ = ("_handle", "_request", "_stream")

    def __init__(self, request: web.Request, stream: TurnStream) -> None:
        self._request = request
        self._stream = stream
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(DISCONNECT_POLL_SECONDS, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        transport = self._request.transport
        if transport is None or transport.is_closing():
            self._handle = None
            self._stream.detach()
            return
        self.start()


async def write_sse(request: web.Request, stream: TurnStream) -> web.StreamResponse:
    """Write every frame of `stream`; returns the (finished) response."""
    headers = {}
    trace_id = request.get(REQUEST_ID_KEY)
    if isinstance(trace_id, str):
        headers["X-Request-Id"] = trace_id
    response = EventSourceResponse(
        headers=headers,
        sep="\n",
        allow_all_methods=True,
        send_timeout=SEND_TIMEOUT_SECONDS,
        ping_interval=COMMENT_KEEPALIVE_SECONDS,
    )
    finished = False
    watcher = _DisconnectWatch(request, stream)
    try:
        await response.prepare(request)
        watcher.start()
        async with response:
            async for frame in stream.frames():
                await response.send(_encoder.encode(frame.data).decode("utf-8"), event=frame.event)
                if frame.is_terminal:
                    finished = True
                    break
        if finished:
            await response.write_eof()
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        # The client went away (reset, stalled past the send timeout, or a write after the transport closed).
        log.debug("SSE client gone on %s: %s", request.path, type(exc).__name__)
    finally:
        watcher.stop()
        if not finished:
            stream.detach()
    return response
