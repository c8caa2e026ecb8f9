"""Requests shaped badly at the HTTP level, sent over a raw socket: a request id that is not printable or
too long (never echoed), header lines that try to inject another header, methods a route does not have,
paths that no route has. Each answer is problem+json or a clean header set, and nothing is written."""

from __future__ import annotations

import asyncio
import re

import pytest

from badinput.conftest import API, Api, expect_problem

RESPONSE_TIMEOUT_SECONDS = 30


async def raw_request(api: Api, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RESPONSE_TIMEOUT_SECONDS)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers, head


@pytest.mark.parametrize(
    "request_id",
    [b"a" * 500, b"\xff\xfe", "caf\u00e9 \u2603".encode()],
    ids=["too-long", "not-utf8", "not-ascii"],
)
async def test_an_unusable_request_id_is_replaced_not_echoed(api: Api, request_id: bytes) -> None:
    request = (
        b"GET " + API.encode() + b"/models HTTP/1.1\r\nHost: x\r\nX-Request-Id: " + request_id + b"\r\n\r\n"
    )
    async with api.unchanged():
        status, headers, head = await raw_request(api, request)
    assert status == 200, head
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]), headers


async def test_a_line_break_in_a_header_value_injects_nothing(api: Api) -> None:
    request = (
        b"GET " + API.encode() + b"/models HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc\r\nX-Injected: 1\r\n\r\n"
    )
    status, headers, head = await raw_request(api, request)
    assert status == 200, head
    assert "x-injected" not in headers
    assert headers["x-request-id"] == "abc"


@pytest.mark.parametrize("method", ["TRACE", "OPTIONS", "PUT", "PROPFIND"])
async def test_a_method_the_route_lacks_is_a_405_problem(api: Api, method: str) -> None:
    async with api.unchanged():
        response = await api.client.request(method, f"{API}/chats")
        await expect_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/chats/", "/v2/chats", "/v1/chats/x/y/z", "/v1/%00"])
async def test_an_unknown_path_under_the_prefix_is_a_404_problem(api: Api, path: str) -> None:
    async with api.unchanged():
        await expect_problem(await api.client.get(f"/mini-chat{path}"), 404)
