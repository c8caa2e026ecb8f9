"""The streamed response's bytes on the wire, read from a raw socket: after the first write (which carries the
status line and headers) the SSE writer frames the chunks of the body itself (`api/sse.py`), so the
framing is checked here byte by byte rather than through a client that would forgive it."""

from __future__ import annotations

import asyncio
import socket
import uuid

import msgspec
import pytest
from fakes.openai_server import Script

from turns.conftest import PREFIX, Harness, assert_grammar, parse_sse

pytestmark = pytest.mark.both_loops  # the server and the provider client on asyncio's loop and on uvloop's

# Tokens longer than 9 bytes: a chunk size written in decimal instead of hex would be caught.
TOKENS = [f"token-{i:02d}-{'x' * (i * 7)} " for i in range(12)]


async def _raw_stream(harness: Harness, chat_id: str, version: str) -> tuple[bytes, bytes]:
    """(head, body) of one streamed turn requested over a raw socket as `version`; the body is read until
    the chunked body's end (HTTP/1.1) or until the server closes the connection (HTTP/1.0)."""
    server = harness.client.server
    body = msgspec.json.encode({"content": "hello", "request_id": str(uuid.uuid4())})
    request = (
        f"POST {PREFIX}/chats/{chat_id}/messages:stream {version}\r\nHost: {server.host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    received = b""
    try:
        await loop.sock_connect(sock, (server.host, server.port))
        await loop.sock_sendall(sock, request)
        async with asyncio.timeout(30):
            while not (version == "HTTP/1.1" and received.endswith(b"\r\n0\r\n\r\n")):
                data = await loop.sock_recv(sock, 65536)
                if not data:
                    break
                received += data
    finally:
        sock.close()
    head, separator, rest = received.partition(b"\r\n\r\n")
    assert separator, received[:300]
    return head, rest


def _dechunk(body: bytes) -> list[bytes]:
    """The chunks of a chunked body (RFC 9112 7.1), strictly: hex size, CRLF, that many bytes, CRLF, and a
    last chunk of size 0 with nothing after it."""
    chunks: list[bytes] = []
    position = 0
    while True:
        line_end = body.index(b"\r\n", position)
        size = int(body[position:line_end], 16)
        start = line_end + 2
        if size == 0:
            assert body[start:] == b"\r\n", body[start:]
            return chunks
        chunk = body[start : start + size]
        assert len(chunk) == size and body[start + size : start + size + 2] == b"\r\n", body[position:]
        chunks.append(chunk)
        position = start + size + 2


async def test_http11_stream_is_chunked_one_whole_frame_set_per_chunk(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(tokens=TOKENS, token_gap_ms=15))
    head, body = await _raw_stream(harness, chat_id, "HTTP/1.1")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding: chunked" in head.lower() and b"content-length" not in head.lower()
    chunks = _dechunk(body)
    # Every chunk carries whole frames: a delta is never split across chunks nor held for the next one.
    assert all(chunk.endswith(b"\n\n") for chunk in chunks), chunks
    frames = parse_sse(b"".join(chunks).decode())
    assert_grammar(frames)
    assert "".join(f.data["content"] for f in frames if f.event == "delta") == "".join(TOKENS)
    # The tokens came 15 ms apart, so each went out in a chunk of its own (after the first write's).
    delta_chunks = [chunk for chunk in chunks if chunk.startswith(b"event: delta")]
    assert len(delta_chunks) >= len(TOKENS) - 1, [c[:40] for c in chunks]
    assert frames[-1].event == "done"
    await harness.wait_idle()


async def test_http10_stream_is_unframed_and_ends_with_the_connection(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(tokens=TOKENS, token_gap_ms=15))
    head, body = await _raw_stream(harness, chat_id, "HTTP/1.0")
    assert head.startswith(b"HTTP/1.0 200 ") or head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding" not in head.lower()
    frames = parse_sse(body.decode())
    assert_grammar(frames)
    assert "".join(f.data["content"] for f in frames if f.event == "delta") == "".join(TOKENS)
    assert frames[-1].event == "done"
    await harness.wait_idle()
