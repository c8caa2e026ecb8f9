"""The SSE writer: turns a domain `TurnStream` into a `text/event-stream` response.

Frames go out as `event: <name>\\ndata: <compact JSON>\\n\\n`: the response is the domain's `FrameSink`,
written by the task that produced the frame (the provider pump for a delta) as soon as it exists.
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
import time
from collections.abc import Sequence
from typing import Final

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter
from aiohttp_sse import EventSourceResponse

from minichat_host.api.problems import REQUEST_ID_KEY
from minichat_host.domain.events import SseFrame
from minichat_host.domain.turns import TurnStream
from minichat_host.scheduling import after_ready_io

log = logging.getLogger("minichat.api.sse")

# SSE comment keep-alive, for proxies that drop idle connections after the first token (original: 30 s).
COMMENT_KEEPALIVE_SECONDS: Final = 30.0
# How often a stream waiting on the model checks whether its client is still connected.
DISCONNECT_POLL_SECONDS: Final = 0.5
SEND_TIMEOUT_SECONDS: Final = 120.0

_encoder = msgspec.json.Encoder()


# A frame goes straight to the socket when little is queued in user space; only a client that has stopped
# reading (a backlog in the transport) makes a write wait for the drain, and that wait has the send timeout.
_QUEUED_BYTES_WITHOUT_TIMEOUT: Final = 32 * 1024


def _frame_bytes(frame: SseFrame) -> bytes:
    return b"event: " + frame.event.encode("ascii") + b"\ndata: " + _encoder.encode(frame.data) + b"\n\n"


_CHUNK: Final = b"%x\r\n%b\r\n"  # one chunk of a chunked body (RFC 9112 7.1): size in hex, data
_UNFRAMED: Final = b""  # HTTP/1.0: the body ends with the connection, bytes go out as they are


def _direct_framing(writer: AbstractStreamWriter | None) -> bytes | None:
    """How the later frames may bypass the response's writer: None while it has anything of its own to do
    (its status line and headers still buffered, compression, a declared length)."""
    if writer is None or not isinstance(writer, StreamWriter):
        return None
    if writer.length is not None or getattr(writer, "_compress", None) is not None:
        return None
    if getattr(writer, "_headers_buf", None):  # aiohttp >= 3.11 sends them with the first body write
        return None
    return _CHUNK if writer.chunked else _UNFRAMED


class _SseResponse(EventSourceResponse):
    """aiohttp-sse's response (headers, chunked, POST allowed, TCP_USER_TIMEOUT for a hung peer) writing
    pre-encoded frames, without the per-response ping task and the per-write timeout.

    Per token, `EventSourceResponse.send` builds the frame through a StringIO and a line-splitting regex
    and arms a send timeout, and every response runs a ping task; on the relay path that was a fifth of the
    CPU per chunk and ~3 KiB per open stream (bench/stream.py, bench/memory.py). The keep-alive comments
    are written by `_StreamWatch` instead, only when a stream has been quiet for the interval.
    """

    # The status line and headers wait for the first frame and go out in the same write: one send (and one
    # wake-up of the client) less per stream, in the step that starts the turn (aiohttp's own `Response`
    # does the same for its body; aiohttp before 3.11 ignores it and sends them on `prepare`).
    _send_headers_immediately = False

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(
            headers=headers,
            sep="\n",
            allow_all_methods=True,
            send_timeout=SEND_TIMEOUT_SECONDS,
            ping_interval=COMMENT_KEEPALIVE_SECONDS,
        )
        self.last_write = time.monotonic()
        # Set once the first write has sent the status line and headers (`_direct_framing`).
        self._framing: bytes | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return self._payload_writer
        self._set_tcp_user_timeout(request)
        writer = await web.StreamResponse.prepare(self, request)
        self.enable_chunked_encoding()
        # Sent: nothing reads a prepared response's headers again, and the multidict of ten is ~0.8 KB that
        # every open stream would keep (bench/memory.py).
        self.headers.clear()
        return writer

    async def write_frame(self, frame: SseFrame) -> bool:
        """The domain's `FrameSink`: write one frame now; False when the client is gone."""
        payload = _frame_bytes(frame)
        if not frame.is_terminal and self._wrote_directly(payload):
            return True
        return await self._write_payload(payload, last=frame.is_terminal)

    async def write_frames(self, frames: Sequence[SseFrame]) -> bool:
        """The domain's `FrameSink`: these frames in one write (one chunk of the chunked body, one send)."""
        payload = b"".join([_frame_bytes(frame) for frame in frames])
        last = frames[-1].is_terminal
        if not last and self._wrote_directly(payload):
            return True
        return await self._write_payload(payload, last=last)

    async def _write_payload(self, payload: bytes, *, last: bool) -> bool:
        try:
            await self.send_raw(payload, last=last)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            # Reset, stalled past the send timeout, or a write after the transport closed.
            log.debug("SSE client gone: %s", type(exc).__name__)
            return False
        return True

    def _wrote_directly(self, payload: bytes) -> bool:
        """Write `payload` as one chunk of the body, framed here, when the response's writer has nothing left
        to do of its own (`_direct_framing`) and little is queued: True when written. Per token, the writer
        would take four Python frames and their checks (compression, declared length, buffered headers) to
        do the same; anything else (the first write, the last, a backlog) goes through `send_raw`."""
        framing = self._framing
        if framing is None:
            return False
        request = self._req
        transport = request.transport if request is not None else None
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() + len(payload) >= _QUEUED_BYTES_WITHOUT_TIMEOUT
        ):
            return False
        self.last_write = time.monotonic()
        transport.write(framing % (len(payload), payload) if framing else payload)
        return True

    async def send_raw(self, payload: bytes, *, last: bool = False) -> None:
        """Write `payload`; `last` ends the response with it (the terminal event and the chunked body's end
        in one write)."""
        if not last and self._wrote_directly(payload):
            return
        transport = self._req.transport if self._req is not None else None
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client is gone")
        self.last_write = time.monotonic()
        write = self.write_eof if last else self.write
        if transport.get_write_buffer_size() + len(payload) < _QUEUED_BYTES_WITHOUT_TIMEOUT:
            await write(payload)
        else:
            try:
                async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                    await write(payload)
            except TimeoutError:
                self._abort_transport()
                raise
        if not last and self._framing is None:
            self._framing = _direct_framing(self._payload_writer)


class StreamWatches:
    """The app's open SSE streams, all checked by one timer every `DISCONNECT_POLL_SECONDS`.

    One timer for every stream rather than one re-armed per stream: at 1,000 open streams that was 2,000
    timer handles a second, and a handle and its context (~0.3 KiB) held by each idle stream
    (bench/memory.py). The timer runs only while a stream is open.
    """

    __slots__ = ("_handle", "_watches")

    def __init__(self) -> None:
        self._watches: set[_StreamWatch] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, watch: _StreamWatch) -> None:
        self._watches.add(watch)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(DISCONNECT_POLL_SECONDS, self._tick)

    def discard(self, watch: _StreamWatch) -> None:
        self._watches.discard(watch)

    def __len__(self) -> int:
        return len(self._watches)

    def _tick(self) -> None:
        self._handle = None
        now = time.monotonic()
        for watch in list(self._watches):  # a check may end its watch
            watch.check(now)
        if self._watches:
            self._handle = asyncio.get_running_loop().call_later(DISCONNECT_POLL_SECONDS, self._tick)


SSE_WATCHES_KEY: Final = web.AppKey("minichat.sse_watches", StreamWatches)


def install(app: web.Application) -> None:
    """Give `app` the registry its SSE responses are watched by (before the app starts)."""
    app[SSE_WATCHES_KEY] = StreamWatches()


class _StreamWatch:
    """Checked every `DISCONNECT_POLL_SECONDS` (by the app's `StreamWatches`): detach the stream as soon as
    the client's connection is gone (even while nothing is written), and write a `: ping` comment when the
    stream has been quiet for `COMMENT_KEEPALIVE_SECONDS`."""

    __slots__ = ("_ping", "_request", "_response", "_stream", "_watches")

    def __init__(
        self, watches: StreamWatches, request: web.Request, response: _SseResponse, stream: TurnStream
    ) -> None:
        self._watches = watches
        self._request = request
        self._response = response
        self._stream = stream
        self._ping: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._watches.add(self)

    def stop(self) -> None:
        self._watches.discard(self)
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None

    def check(self, now: float) -> None:
        transport = self._request.transport
        if transport is None or transport.is_closing():
            self._watches.discard(self)
            self._stream.detach()
            return
        quiet = now - self._response.last_write
        if quiet >= COMMENT_KEEPALIVE_SECONDS and (self._ping is None or self._ping.done()):
            self._ping = asyncio.create_task(self._send_ping())

    async def _send_ping(self) -> None:
        try:
            await self._response.send_raw(_PING_COMMENT)
        except (ConnectionError, TimeoutError, RuntimeError):
            self._stream.detach()


_PING_COMMENT: Final = b": ping\n\n"


async def write_sse(request: web.Request, stream: TurnStream) -> web.StreamResponse:
    """Write every frame of `stream`; returns the (finished) response."""
    headers = {}
    trace_id = request.get(REQUEST_ID_KEY)
    if isinstance(trace_id, str):
        headers["X-Request-Id"] = trace_id
    response = _SseResponse(headers)
    finished = False
    watcher = _StreamWatch(request.app[SSE_WATCHES_KEY], request, response, stream)
    try:
        await response.prepare(request)
        watcher.start()
        # The upstream request is on the wire; the first frame can wait for the reads that are ready now
        # (other streams' chunks) instead of going ahead of them.
        await after_ready_io()
        finished = await stream.relay(response)
        if finished:
            watcher.stop()  # no ping may follow the terminal event
            await response.write_eof()
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        # The client went away (reset, stalled past the send timeout, or a write after the transport closed).
        log.debug("SSE client gone on %s: %s", request.path, type(exc).__name__)
    finally:
        watcher.stop()
        if not finished:
            stream.detach()
    return response
