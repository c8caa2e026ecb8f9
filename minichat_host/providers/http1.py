"""A small HTTP/1.1 client for the provider calls (the streamed and the plain POSTs to an OpenAI-style API).

Why not aiohttp's client here: a provider stream is one upstream connection per open turn, and aiohttp's
client keeps a request, a response with two header copies, a stream reader, a data queue, a connection and
a key object per connection, ~9 KB per idle stream (bench/memory.py), for features these calls do not use.
This is an `asyncio.Protocol` with `httptools` (the llhttp parser uvicorn uses) doing the parsing: a
connection is one object, the response body arrives as a list of chunks, and the consumer waits on one
future with one read-timeout timer. Keep-alive connections are pooled per origin. aiohttp's client still
serves the file and vector-store calls (multipart uploads), which are neither hot nor long-lived.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from functools import lru_cache
from typing import Final, cast
from urllib.parse import urlencode, urlsplit

import httptools

from minichat_host import __version__

IDLE_CONNECTION_SECONDS: Final = 15.0  # a pooled connection unused this long is closed, not reused
# A stream read up to its last event (`data: [DONE]`) may still have the body's end (the last, empty chunk)
# in flight: a released response waits this long, discarding up to _DRAIN_BYTES, before it gives up its
# connection rather than pooling it.
DRAIN_SECONDS: Final = 1.0
_DRAIN_BYTES: Final = 64 * 1024
_PAUSE_READING_AT: Final = 256 * 1024  # unread body bytes at which the socket stops being read
_USER_AGENT: Final = f"minichat/{__version__}"


class HttpClientError(Exception):
    """A transport failure of a provider call (the adapters map these to `ProviderError`)."""


class ConnectTimeout(HttpClientError, TimeoutError):
    pass


class ConnectFailed(HttpClientError):
    pass


class ReadTimeout(HttpClientError, TimeoutError):
    """Nothing arrived within the read timeout while the response was awaited."""


class ConnectionBroken(HttpClientError):
    """The connection closed, or sent something that is not HTTP/1.1, before the response ended."""


class BodyTooLarge(HttpClientError):
    pass


@lru_cache(maxsize=256)
def _origin(url: str) -> tuple[tuple[str, str, int], str, str]:
    """(pool key (scheme, host, port), Host header, path) of an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    default_port = 443 if scheme == "https" else 80
    port = parts.port or default_port
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default_port else f"{shown}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return (scheme, host, port), host_header, path


def _header_line(name: str, value: str) -> str:
    if any(c in name or c in value for c in "\r\n\0"):
        raise ValueError(f"header {name!r} contains a line break")
    return f"{name}: {value}\r\n"


class Http1Client:
    """POSTs over pooled keep-alive HTTP/1.1 connections. One per configured provider."""

    def __init__(
        self,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: dict[tuple[str, str, int], list[Http1Response]] = {}
        self._open: set[Http1Response] = set()
        self._ssl = ssl_context  # the system's trust store (created on the first https call) by default
        self._prune_timer: asyncio.TimerHandle | None = None  # closes idle connections past their time

    async def post(
        self, url: str, params: dict[str, str], headers: dict[str, str], body: bytes
    ) -> Http1Response:
        """Send the request and wait for the response's status and headers. The caller must `release()`
        (body read to its end: the connection goes back to the pool) or `close()` the response."""
        key, host_header, path = _origin(url)
        if params:
            path = f"{path}{'&' if '?' in path else '?'}{urlencode(params)}"
        lines = [
            f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {_USER_AGENT}\r\n"
            f"Accept-Encoding: identity\r\nContent-Length: {len(body)}\r\n"
        ]
        lines.extend(_header_line(name, value) for name, value in headers.items())
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        response = self._pooled(key) or await self._connect(key)
        response.send(head, body)
        try:
            await response.wait_headers()
        except BaseException:
            response.close()
            raise
        return response

    def _pooled(self, key: tuple[str, str, int]) -> Http1Response | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_usable = asyncio.get_running_loop().time() - IDLE_CONNECTION_SECONDS
        while idle:
            response = idle.pop()
            if response.reusable and response.idle_since >= oldest_usable:
                return response
            response.close()
        return None

    async def _connect(self, key: tuple[str, str, int]) -> Http1Response:
        scheme, host, port = key
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        response = Http1Response(self, key, self._read_timeout)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(lambda: response, host, port, ssl=context)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
        self._open.add(response)
        return response

    def _give_back(self, response: Http1Response) -> None:
        loop = asyncio.get_running_loop()
        response.idle_since = loop.time()
        self._idle.setdefault(response.key, []).append(response)
        if self._prune_timer is None:
            self._prune_timer = loop.call_later(IDLE_CONNECTION_SECONDS, self._prune)

    def _prune(self) -> None:
        """Close the connections idle for longer than IDLE_CONNECTION_SECONDS (oldest first in each list)."""
        self._prune_timer = None
        loop = asyncio.get_running_loop()
        oldest_usable = loop.time() - IDLE_CONNECTION_SECONDS
        next_due: float | None = None
        for key, idle in list(self._idle.items()):
            while idle and (idle[0].idle_since < oldest_usable or not idle[0].reusable):
                idle.pop(0).close()
            if idle:
                due = idle[0].idle_since + IDLE_CONNECTION_SECONDS
                next_due = due if next_due is None else min(next_due, due)
            else:
                del self._idle[key]
        if next_due is not None:
            self._prune_timer = loop.call_at(next_due, self._prune)

    def _forget(self, response: Http1Response) -> None:
        self._open.discard(response)

    def close(self) -> None:
        if self._prune_timer is not None:
            self._prune_timer.cancel()
            self._prune_timer = None
        for response in list(self._open):
            response.close()
        self._idle.clear()


class Http1Response(asyncio.Protocol):
    """One connection, and while a request is out on it, that request's response: `status`, then the body
    through `read_chunk()` / `read()`. Parsed by httptools, which calls the `on_*` methods below."""

    __slots__ = (
        "_body",
        "_buffered",
        "_client",
        "_decoder",
        "_drain_timer",
        "_error",
        "_framed",
        "_headers_done",
        "_keep_alive",
        "_message_done",
        "_parser",
        "_paused",
        "_read_since",
        "_read_timeout",
        "_read_timer",
        "_transport",
        "_waiter",
        "idle_since",
        "key",
        "status",
    )

    def __init__(self, client: Http1Client, key: tuple[str, str, int], read_timeout: float | None) -> None:
        self._client = client
        self.key = key
        self._read_timeout = read_timeout
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._body: list[bytes] = []
        self._buffered = 0
        self._decoder: zlib._Decompress | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._error: HttpClientError | None = None
        self._framed = False  # a Content-Length or chunked body; else the body ends with the connection
        self._headers_done = False
        self._keep_alive = False
        self._message_done = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        # The read timeout is one lazily re-armed timer per connection, not a timer per wait: a stream
        # waits once per chunk, and every cancelled timer would sit in the loop's heap for the timeout's
        # length (120 s by default).
        self._read_since = 0.0  # the start of the current wait, or the last bytes received during it
        self._read_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.status = 0

    # --- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports implement asyncio.Transport's methods
        # without deriving from it (an assert here failed every model call under `server.event_loop: uvloop`).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is not None:
            self._read_since = asyncio.get_running_loop().time()
        parser = self._parser
        if parser is None:  # bytes on an idle pooled connection: it cannot be reused
            self._fail(ConnectionBroken("the provider sent bytes outside a response"))
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionBroken(f"the provider sent a malformed HTTP response ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        self._transport = None
        self._client._forget(self)
        if exc is None and self._parser is not None and self._headers_done and not self._framed:
            # A body with neither a length nor chunks ends with the connection (RFC 9112 6.3).
            self._message_done = True
            self._wake()
        elif not self._message_done:
            self._fail(ConnectionBroken("the provider closed the connection"))

    # --- httptools callbacks -------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self._framed = True
        elif name == b"content-encoding":
            coding = value.strip().lower()
            if coding in (b"gzip", b"x-gzip"):
                self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif coding == b"deflate":
                self._decoder = zlib.decompressobj()
            elif coding not in (b"", b"identity"):
                raise ValueError(f"unsupported content encoding {coding!r}")

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status < 200:  # an interim response (100 Continue, 103 Early Hints): the real one follows
            self._decoder = None
            self._framed = False
            return
        self.status = status
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            body = self._decoder.decompress(body)
            if not body:
                return
        self._buffered += len(body)
        if self._drain_timer is not None:
            if self._buffered > _DRAIN_BYTES:
                self.close()
            return
        self._body.append(body)
        if self._buffered >= _PAUSE_READING_AT and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        parser = self._parser
        if not self._headers_done or parser is None:
            return  # the end of an interim response, or of bytes still parsed after a close
        self._keep_alive = parser.should_keep_alive()  # (reads False once the parser moves on)
        self._message_done = True
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
            self.release()
        self._wake()

    # --- the request side ----------------------------------------------------------------------------
    @property
    def reusable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing() and self._error is None

    def send(self, head: bytes, body: bytes) -> None:
        transport = self._transport
        assert transport is not None and self._parser is None, "one request at a time per connection"
        self._parser = httptools.HttpResponseParser(self)
        self._body = []
        self._buffered = 0
        self._decoder = None
        self._headers_done = self._message_done = self._keep_alive = False
        self.status = 0
        self._framed = False
        # One write (not `writelines`): an empty part in 3.12's writelines stays in the transport's buffer.
        transport.write(head + body)

    async def wait_headers(self) -> None:
        while not self._headers_done:
            await self._armed_waiter()

    async def read_chunk(self) -> bytes:
        """The body's bytes received since the last call, waiting for some; b"" at the end of the body."""
        while not self._body:
            if self._message_done:
                return b""
            # The future itself, not a coroutine around it: one frame less for every streamed token to resume.
            await self._armed_waiter()
        body = self._body
        chunk = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return chunk

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body; with `limit`, at most that many bytes (the rest is left unread)."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.read_chunk():
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size >= limit:
                return b"".join(parts)[:limit]
        return b"".join(parts)

    def release(self) -> None:
        """Done with the response: a fully read one leaves its connection in the pool, one whose framed body
        has not ended yet gets `DRAIN_SECONDS` to end, anything else is closed."""
        if self._parser is None or not self.reusable or self._paused:
            self.close()
        elif self._message_done:
            if self._keep_alive:
                self._parser = None
                self._body = []
                self._client._give_back(self)
            else:
                self.close()
        elif self._headers_done and self._framed and self._drain_timer is None:
            self._body = []
            self._buffered = 0
            self._drain_timer = asyncio.get_running_loop().call_later(DRAIN_SECONDS, self.close)
        else:
            self.close()

    def close(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._parser = None
        self._body = []
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
            self._client._forget(self)

    # --- waiting -------------------------------------------------------------------------------------
    def _armed_waiter(self) -> asyncio.Future[None]:
        """The future the next bytes or the end resolve (`_wake`), or a failure fails, with the read timeout
        armed. Whoever resolves it also forgets it, so nothing is left to do after the await."""
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        if self._read_timeout is not None:
            self._read_since = loop.time()
            if self._read_timer is None:
                self._read_timer = loop.call_at(
                    self._read_since + self._read_timeout, self._check_read_timeout
                )
        return waiter

    def _check_read_timeout(self) -> None:
        self._read_timer = None
        waiter, timeout = self._waiter, self._read_timeout
        if waiter is None or waiter.done() or timeout is None:
            return  # not waiting now: the next wait arms the timer again
        loop = asyncio.get_running_loop()
        due = self._read_since + timeout
        if loop.time() >= due:
            self._waiter = None
            waiter.set_exception(ReadTimeout("the provider sent nothing within the read timeout"))
        else:
            self._read_timer = loop.call_at(due, self._check_read_timeout)

    def _wake(self) -> None:
        """Resolve the waiter: bytes, the headers or the end arrived; or fail it with `_error`."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                if self._error is not None:
                    waiter.set_exception(self._error)
                else:
                    waiter.set_result(None)

    def _fail(self, error: HttpClientError) -> None:
        if self._error is None:
            self._error = error
        if self._transport is not None:
            self._transport.close()
        self._wake()
