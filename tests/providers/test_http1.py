"""The provider HTTP/1.1 client (providers/http1.py) against a raw asyncio server that writes exact bytes:
every body framing, keep-alive pooling, interim responses, compression, timeouts and broken servers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import gzip
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fakes.openai_server import FakeOpenAI, Script
from fakes.provider_configs import chat_config, responses_config

from minichat_host.providers import http1
from minichat_host.providers.base import (
    InputMessage,
    InputText,
    ProviderError,
    ProviderRequest,
    StreamEvent,
    TextDelta,
)
from minichat_host.providers.openai_chat import OpenAIChatProvider
from minichat_host.providers.openai_responses import OpenAIResponsesProvider

pytestmark = pytest.mark.both_loops  # the provider client on asyncio's loop and on uvloop's

Reply = Callable[[bytes], list[bytes | float]]  # request head + body -> writes (bytes) and pauses (seconds)


@dataclass
class RawServer:
    """Reads each request (head + Content-Length body) and answers with the scripted writes; a reply
    ending in b"" closes the connection."""

    replies: list[Reply] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                for step in self.replies.pop(0)(request):
                    if isinstance(step, float):
                        await asyncio.sleep(step)
                    elif step == b"":
                        writer.close()
                        return
                    else:
                        writer.write(step)
                        await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    state = RawServer()
    state.server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    try:
        yield state
    finally:
        state.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(state.server.wait_closed(), 2)


@pytest.fixture
async def client() -> AsyncIterator[http1.Http1Client]:
    c = http1.Http1Client(connect_timeout=2.0, read_timeout=2.0)
    yield c
    c.close()


def reply(*steps: bytes | float) -> Reply:
    return lambda _request: list(steps)


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def post(client: http1.Http1Client, url: str, body: bytes = b"{}") -> tuple[int, bytes]:
    response = await client.post(url + "/v1/chat/completions", {"api-version": "1"}, {"X-Test": "1"}, body)
    data = await response.read()
    response.release()
    return response.status, data


async def test_request_bytes(raw: RawServer, client: http1.Http1Client) -> None:
    raw.replies.append(reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    assert await post(client, raw.url, b'{"a":1}') == (200, b"ok")
    head, _, body = raw.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions?api-version=1 HTTP/1.1"
    port = raw.url.rsplit(":", 1)[1].encode()
    assert b"Host: 127.0.0.1:" + port in lines
    assert b"Content-Length: 7" in lines and b"X-Test: 1" in lines and b"Accept-Encoding: identity" in lines
    assert body == b'{"a":1}'


async def test_chunked_and_sized_bodies_reuse_one_connection(
    raw: RawServer, client: http1.Http1Client
) -> None:
    raw.replies += [
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", 0.02, b"lo"),
        reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", chunked(b"a", b"bc")),
        reply(b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nbad"),
    ]
    assert await post(client, raw.url) == (200, b"hello")
    assert await post(client, raw.url) == (200, b"abc")
    assert await post(client, raw.url) == (500, b"bad")
    assert raw.connections == 1


async def test_chunks_arrive_as_they_are_sent(raw: RawServer, client: http1.Http1Client) -> None:
    raw.replies.append(
        reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"3\r\none\r\n",
            0.05,
            b"3\r\ntwo\r\n",
            0.05,
            b"0\r\n\r\n",
        )
    )
    response = await client.post(raw.url + "/x", {}, {}, b"")
    assert [await response.read_chunk(), await response.read_chunk(), await response.read_chunk()] == [
        b"one",
        b"two",
        b"",
    ]
    response.release()


async def test_connection_close_and_unread_bodies_are_not_pooled(
    raw: RawServer, client: http1.Http1Client
) -> None:
    raw.replies += [
        reply(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na"),
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab", 0.2, b"cd"),
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ]
    assert await post(client, raw.url) == (200, b"a")
    response = await client.post(raw.url + "/x", {}, {}, b"")
    assert await response.read_chunk() == b"ab"
    response.release()  # half read: closed, not pooled
    assert await post(client, raw.url) == (200, b"b")
    assert raw.connections == 3


async def test_a_released_stream_with_too_much_left_is_closed(
    raw: RawServer, client: http1.Http1Client
) -> None:
    """More than the drain allowance still to come (in the same packet as its end): closed, not pooled."""
    rest = b"x" * (100 * 1024)
    raw.replies += [
        reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n",
            0.1,
            chunked(rest),
        ),
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ]
    response = await client.post(raw.url + "/x", {}, {}, b"")
    assert await response.read_chunk() == b"first"
    response.release()
    await asyncio.sleep(0.3)
    assert await post(client, raw.url) == (200, b"b")
    assert raw.connections == 2


@pytest.mark.parametrize(("tail_after", "connections"), [(0.05, 1), (0.6, 2)], ids=["in-time", "too-late"])
async def test_a_released_stream_waits_briefly_for_its_end(
    raw: RawServer,
    client: http1.Http1Client,
    monkeypatch: pytest.MonkeyPatch,
    tail_after: float,
    connections: int,
) -> None:
    """Read up to its last event, a stream's last empty chunk may still be in flight: the connection is
    pooled when it arrives within DRAIN_SECONDS, closed when it does not."""
    monkeypatch.setattr(http1, "DRAIN_SECONDS", 0.3)
    raw.replies += [
        reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"e\r\ndata: [DONE]\n\n\r\n",
            tail_after,
            b"3\r\nxyz\r\n0\r\n\r\n",
        ),
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ]
    response = await client.post(raw.url + "/x", {}, {}, b"")
    assert await response.read_chunk() == b"data: [DONE]\n\n"
    response.release()
    await asyncio.sleep(tail_after + 0.1)
    assert await post(client, raw.url) == (200, b"b")
    assert raw.connections == connections


async def test_a_body_ended_by_the_connection(raw: RawServer, client: http1.Http1Client) -> None:
    raw.replies.append(reply(b"HTTP/1.1 200 OK\r\n\r\nuntil ", 0.02, b"close", b""))
    assert await post(client, raw.url) == (200, b"until close")


async def test_interim_responses_are_skipped(raw: RawServer, client: http1.Http1Client) -> None:
    raw.replies.append(
        reply(b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    )
    assert await post(client, raw.url) == (201, b"ok")
    raw.replies.append(  # hints with a Link header, then a body that ends with the connection
        reply(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\nto the end", b"")
    )
    assert await post(client, raw.url) == (200, b"to the end")


async def test_gzip_bodies_are_decoded(raw: RawServer, client: http1.Http1Client) -> None:
    packed = gzip.compress(b"data: {}\n\n" * 50)
    raw.replies.append(
        reply(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed), packed
        )
    )
    assert await post(client, raw.url) == (200, b"data: {}\n\n" * 50)


async def test_a_large_body_is_read_whole_under_flow_control(
    raw: RawServer, client: http1.Http1Client
) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, over the point where reading pauses
    raw.replies.append(reply(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body))
    response = await client.post(raw.url + "/x", {}, {}, b"")
    await asyncio.sleep(0.2)  # let the server fill the buffers while nothing reads
    assert await response.read() == body
    response.release()


async def test_read_limit(raw: RawServer, client: http1.Http1Client) -> None:
    raw.replies.append(reply(b"HTTP/1.1 400 Bad\r\nContent-Length: 10\r\n\r\n0123456789"))
    response = await client.post(raw.url + "/x", {}, {}, b"")
    assert await response.read(4) == b"0123"
    response.close()


@pytest.mark.parametrize(
    ("steps", "error"),
    [
        ((b"",), http1.ConnectionBroken),  # closed before any response
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", b""), http1.ConnectionBroken),
        ((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", b""), http1.ConnectionBroken),
        ((b"SMTP ready\r\n\r\n",), http1.ConnectionBroken),  # not HTTP
        ((b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",), http1.ConnectionBroken),
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", 5.0), http1.ReadTimeout),  # stalls
        ((5.0,), http1.ReadTimeout),  # no headers
    ],
    ids=["closed", "short-sized", "short-chunked", "not-http", "brotli", "stall-body", "stall-headers"],
)
async def test_broken_servers(
    raw: RawServer, steps: tuple[bytes | float, ...], error: type[Exception]
) -> None:
    raw.replies.append(reply(*steps))
    client = http1.Http1Client(connect_timeout=2.0, read_timeout=0.3)
    try:
        with pytest.raises(error):
            await post(client, raw.url)
    finally:
        client.close()


async def test_bytes_that_arrived_before_a_failure_are_read_first(
    raw: RawServer, client: http1.Http1Client
) -> None:
    # The head, a chunk and a malformed chunk size in one write: parsed in one go, the failure comes after
    # the bytes before it, and each read gets what it would have got had they arrived apart.
    raw.replies.append(reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"))
    response = await client.post(raw.url + "/x", {}, {}, b"")
    assert response.status == 200
    assert await response.read_chunk() == b"abc"
    with pytest.raises(http1.ConnectionBroken):
        await response.read_chunk()
    with pytest.raises(http1.ConnectionBroken):  # and again: the failure stays
        await response.read_chunk()
    response.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def test_https_verifies_the_server_and_pools(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    state = RawServer(replies=[reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")] * 2)
    state.server = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=server_context)
    port = state.server.sockets[0].getsockname()[1]
    trusting = ssl.create_default_context(cafile=str(cert_file))
    client = http1.Http1Client(connect_timeout=2.0, read_timeout=2.0, ssl_context=trusting)
    default = http1.Http1Client(connect_timeout=2.0, read_timeout=2.0)
    try:
        assert await post(client, f"https://localhost:{port}") == (200, b"ok")
        assert await post(client, f"https://localhost:{port}") == (200, b"ok")
        assert state.connections == 1
        assert b"Host: localhost:%d" % port in state.requests[0]
        with pytest.raises(http1.ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            await post(default, f"https://localhost:{port}")  # not in the system's trust store
    finally:
        client.close()
        default.close()
        state.server.close()


async def test_the_read_timeout_is_per_wait_not_per_response(raw: RawServer) -> None:
    """Chunks 0.15 s apart under a 0.3 s read timeout: the whole response takes longer than the timeout
    and still arrives; then a 0.6 s stall fails it."""
    gap: list[bytes | float] = []
    for index in range(5):
        gap += [b"1\r\n%d\r\n" % index, 0.15]
    raw.replies.append(
        reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *gap, 0.6, b"0\r\n\r\n")
    )
    client = http1.Http1Client(connect_timeout=2.0, read_timeout=0.3)
    try:
        response = await client.post(raw.url + "/x", {}, {}, b"")
        received = b""
        with pytest.raises(http1.ReadTimeout):
            while chunk := await response.read_chunk():
                received += chunk
        assert received == b"01234"
    finally:
        client.close()


async def test_connection_refused(refused_url: str, client: http1.Http1Client) -> None:
    with pytest.raises(http1.ConnectFailed):
        await post(client, refused_url)


async def test_header_injection_is_refused(raw: RawServer, client: http1.Http1Client) -> None:
    with pytest.raises(ValueError, match="line break"):
        await client.post(raw.url + "/x", {}, {"Authorization": "Bearer k\r\nX-Evil: 1"}, b"")
    assert raw.requests == []


async def test_a_pooled_connection_the_server_closed_is_not_reused(
    raw: RawServer, client: http1.Http1Client
) -> None:
    raw.replies += [
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", 0.05, b""),  # closes after the response
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ]
    assert await post(client, raw.url) == (200, b"a")
    await asyncio.sleep(0.2)  # the close arrives while the connection is pooled
    assert await post(client, raw.url) == (200, b"b")
    assert raw.connections == 2


async def test_idle_connections_expire(
    raw: RawServer, client: http1.Http1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw.replies += [reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")] * 2
    monkeypatch.setattr(http1, "IDLE_CONNECTION_SECONDS", 0.05)
    assert await post(client, raw.url) == (200, b"a")
    await asyncio.sleep(0.1)
    assert await post(client, raw.url) == (200, b"a")
    assert raw.connections == 2


async def test_idle_connections_are_closed_in_the_background(
    raw: RawServer, client: http1.Http1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pooled connections nobody asks for again are closed once past IDLE_CONNECTION_SECONDS."""
    monkeypatch.setattr(http1, "IDLE_CONNECTION_SECONDS", 0.1)
    raw.replies += [reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")] * 3
    first = await client.post(raw.url + "/x", {}, {}, b"")
    second = await client.post(raw.url + "/x", {}, {}, b"")  # two connections at once
    for response in (first, second):
        assert await response.read() == b"a"
        response.release()
    assert raw.connections == 2 and len(client._open) == 2
    await asyncio.sleep(0.35)
    assert client._open == set() and client._idle == {}
    assert await post(client, raw.url) == (200, b"a")  # and a new one is made when needed
    assert raw.connections == 3


async def test_closing_the_client_closes_its_connections(raw: RawServer) -> None:
    raw.replies.append(reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", 5.0))
    client = http1.Http1Client(connect_timeout=2.0, read_timeout=5.0)
    response = await client.post(raw.url + "/x", {}, {}, b"")
    assert await response.read_chunk() == b"abc"
    client.close()
    with pytest.raises(http1.ConnectionBroken):
        await response.read_chunk()


async def test_consecutive_turns_share_one_upstream_connection(fake: FakeOpenAI) -> None:
    """Through the Chat Completions adapter against the fake provider (aiohttp's server)."""
    adapter = OpenAIChatProvider("vllm", chat_config(fake.base_url))
    request = ProviderRequest(model="m", input=[InputMessage(role="user", content=[InputText(text="hi")])])
    try:
        for _ in range(3):
            assert [event async for event in adapter.stream(request, tenant_id="t")]
        transport = adapter._client.http()
        assert sum(len(idle) for idle in transport._idle.values()) == 1
    finally:
        await adapter.aclose()


async def test_a_refused_request_maps_to_a_provider_error(refused_url: str) -> None:
    adapter = OpenAIChatProvider("vllm", chat_config(refused_url))
    request = ProviderRequest(model="m", input=[InputMessage(role="user", content=[InputText(text="hi")])])
    try:
        with pytest.raises(ProviderError, match="cannot connect"):
            await adapter.complete(request, tenant_id="t")
    finally:
        await adapter.aclose()


def _messages_saying(text: str) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is InputMessage and o.content[0].text == text)  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["chat", "responses"])
async def test_an_open_stream_does_not_keep_the_prompt(fake: FakeOpenAI, kind: str) -> None:
    """Once sent, the request (its whole history) is not held for the length of the stream."""
    adapter: OpenAIChatProvider | OpenAIResponsesProvider = (
        OpenAIChatProvider("vllm", chat_config(fake.base_url))
        if kind == "chat"
        else OpenAIResponsesProvider("openai", responses_config(fake.base_url))
    )
    fake.script(Script(tokens=["a ", "b ", "c "], token_gap_ms=300))
    prompt = f"the whole history {uuid.uuid4()} " * 100
    model = "m" if kind == "chat" else "gpt-test"
    stream = adapter.stream(
        ProviderRequest(model=model, input=[InputMessage(role="user", content=[InputText(text=prompt)])]),
        tenant_id="t",
    )
    assert _messages_saying(prompt) == 1
    try:
        seen: list[StreamEvent] = []
        async for event in stream:
            seen.append(event)
            if isinstance(event, TextDelta):
                assert _messages_saying(prompt) == 0, (
                    "the prompt is still referenced while the stream is open"
                )
        assert [e.text for e in seen if isinstance(e, TextDelta)] == ["a ", "b ", "c "]
    finally:
        await adapter.aclose()
