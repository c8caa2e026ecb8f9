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
import contextlib
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


async def _watch_disconnect(request: web.Request, stream: TurnStream) -> None:
    """Detach the stream as soon as the client's connection is gone, even while nothing is written."""
    while True:
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
        transport = request.transport
        if transport is None or transport.is_closing():
            stream.detach()
            return


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
    watcher: asyncio.Task[None] | None = None
    try:
        await response.prepare(request)
        watcher = asyncio.create_task(_watch_disconnect(request, stream))
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
        if not finished:
            stream.detach()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return response
