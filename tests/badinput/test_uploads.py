"""Hostile uploads: file names with traversal, absolute paths, NUL / CR / LF and bidi controls (stored
sanitized, never used as a path, never echoed into a header), malformed multipart bodies, and multipart
bombs — thousands of parts, deep or wide nesting, huge parts with or without a file name, endless
chunked streams. Every rejection is a problem+json 4xx after bounded work and changes nothing."""

from __future__ import annotations

import asyncio
import itertools
import unicodedata
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from badinput.conftest import API, MAX_UPLOAD_KB, Api, expect_problem
from minichat_host.db.tables import attachments

BOUNDARY = b"b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY.decode()}"
TEXT = b"Content-Type: text/plain"
# How much an endless stream may send before the server must have answered (every cap is far below).
STREAM_CAP_BYTES = 64 * 1024 * 1024
RESPONSE_TIMEOUT_SECONDS = 60


def disposition(extra: bytes = b"", name: bytes = b"file") -> bytes:
    return b'Content-Disposition: form-data; name="' + name + b'"' + extra


def multipart(parts: Iterable[tuple[list[bytes], bytes]], boundary: bytes = BOUNDARY) -> bytes:
    """A multipart body from raw part headers (any bytes, CR/LF and NUL included) and bodies."""
    out = bytearray()
    for headers, body in parts:
        out += b"--" + boundary + b"\r\n"
        for header in headers:
            out += header + b"\r\n"
        out += b"\r\n" + body + b"\r\n"
    out += b"--" + boundary + b"--\r\n"
    return bytes(out)


def upload_url(api: Api) -> str:
    return f"{API}/chats/{api.chat_id}/attachments"


async def post_multipart(api: Api, body: bytes, content_type: str = MULTIPART) -> Any:
    return await api.client.post(upload_url(api), data=body, headers={"Content-Type": content_type})


def is_safe_name(name: str) -> bool:
    return (
        0 < len(name) <= 255
        and not any(ch in name for ch in "/\\")
        and not any(unicodedata.category(ch).startswith("C") for ch in name)
        and name not in (".", "..")
    )


HOSTILE_FILENAMES: dict[str, bytes] = {
    "parent-traversal": b'; filename="../../etc/passwd.txt"',
    "absolute": b'; filename="/etc/passwd.txt"',
    "windows-path": b'; filename="C:\\\\Windows\\\\System32\\\\evil.txt"',
    "encoded-crlf-header": b"; filename*=UTF-8''..%2F..%2Fevil%0D%0AX-Injected%3A%201.txt",
    "encoded-nul": b"; filename*=UTF-8''evil%00.txt",
    "raw-nul": b'; filename="evil\x00.txt"',
    "raw-crlf": b'; filename="evil\r\nX-Injected: 1.txt"',
    "bidi-override": '; filename="evil\u202etxt.exe"'.encode(),
    "very-long": b'; filename="' + b"n" * 1000 + b'.txt"',
    "dot-dot": b'; filename=".."',
    "empty": b'; filename=""',
    "only-separators": b'; filename="/\\\\/"',
}


async def test_hostile_file_names_are_sanitized_or_rejected(api_any_engine: Api, data_dir: Path) -> None:
    """Each name either gives a 201 with a safe stored name or a 400 that wrote nothing."""
    api = api_any_engine
    for case, extra in HOSTILE_FILENAMES.items():
        body = multipart([([disposition(extra), TEXT], b"hello")])
        before = await api.snapshot()
        response = await post_multipart(api, body)
        assert not any(name.lower().startswith("x-injected") for name in response.headers), case
        if response.status != 201:
            assert response.status == 400, (case, await response.text())
            await expect_problem(response, 400, "invalid_upload")
            assert await api.snapshot() == before, case
            continue
        created = await response.json()
        assert is_safe_name(created["filename"]), (case, created)
        fetched = await api.client.get(f"{upload_url(api)}/{created['id']}")
        assert not any(name.lower().startswith("x-injected") for name in fetched.headers), case
        assert (await fetched.json())["filename"] == created["filename"], case
        stored = await api.db.fetch_val(
            sa.select(attachments.c.filename).where(attachments.c.id == uuid.UUID(created["id"]))
        )
        assert stored == created["filename"], case
        if case == "very-long":
            assert created["filename"].endswith(".txt")
    # The user's names are never paths: nothing on disk is named after them.
    for path in await asyncio.to_thread(lambda: list(data_dir.rglob("*"))):
        assert "passwd" not in path.name and "evil" not in path.name, path


MALFORMED: dict[str, tuple[bytes, str]] = {
    "no-boundary": (multipart([([disposition(b'; filename="a.txt"'), TEXT], b"x")]), "multipart/form-data"),
    "wrong-boundary": (multipart([([disposition(b'; filename="a.txt"'), TEXT], b"x")], b"other"), MULTIPART),
    "garbage": (b"this is not multipart", MULTIPART),
    "empty": (b"", MULTIPART),
    "unterminated": (b"--" + BOUNDARY + b"\r\n" + disposition(b'; filename="a.txt"') + b"\r\n", MULTIPART),
    "no-file-part": (multipart([([disposition(name=b"other"), TEXT], b"x")]), MULTIPART),
    "file-part-without-content-type": (multipart([([disposition(b'; filename="a.txt"')], b"x")]), MULTIPART),
    "part-without-disposition": (multipart([([TEXT], b"x")]), MULTIPART),
    "json-instead": (b'{"file": "x"}', "application/json"),
    "form-urlencoded": (b"file=x", "application/x-www-form-urlencoded"),
    "nul-in-part-header": (multipart([([disposition(b"; x=\x00"), TEXT], b"x")]), MULTIPART),
}


async def test_malformed_uploads_are_400(api: Api) -> None:
    async with api.unchanged():
        for case, (body, content_type) in MALFORMED.items():
            response = await post_multipart(api, body, content_type)
            assert response.status == 400, (case, await response.text())
            await expect_problem(response, 400, "invalid_upload")


async def test_a_disallowed_type_is_415(api: Api) -> None:
    body = multipart(
        [([disposition(b'; filename="bad.exe"'), b"Content-Type: application/octet-stream"], b"MZ")]
    )
    async with api.unchanged():
        await expect_problem(await post_multipart(api, body), 415, "unsupported_file_type")


def empty_parts(count: int) -> list[tuple[list[bytes], bytes]]:
    return [([disposition(name=b"junk")], b"")] * count


def nested(depth: int) -> tuple[bytes, str]:
    """A junk part holding a multipart body holding a multipart body ... `depth` levels deep."""
    body = b"x"
    content_type = b"text/plain"
    for level in range(depth):
        boundary = b"n%d" % level
        body = multipart([([disposition(name=b"junk"), b"Content-Type: " + content_type], body)], boundary)
        content_type = b"multipart/mixed; boundary=" + boundary
    return body, "multipart/form-data; boundary=" + f"n{depth - 1}"


# Bodies under the Content-Length cap are parsed (and cut off by the part and byte caps); larger ones are
# refused from the Content-Length header alone.
BOMBS: dict[str, tuple[bytes, str, int, str]] = {
    "2k-empty-parts": (multipart(empty_parts(2_000)), MULTIPART, 400, "invalid_upload"),
    "2k-parts-before-the-file": (
        multipart([*empty_parts(2_000), ([disposition(b'; filename="a.txt"'), TEXT], b"x")]),
        MULTIPART,
        400,
        "invalid_upload",
    ),
    "100k-empty-parts": (multipart(empty_parts(100_000)), MULTIPART, 413, "file_too_large"),
    "nested-1000-deep": (*nested(1000), 400, "invalid_upload"),
    "nested-3000-wide": (
        multipart(
            [
                (
                    [disposition(name=b"junk"), b"Content-Type: multipart/mixed; boundary=inner"],
                    multipart([([TEXT], b"")] * 3_000, b"inner"),
                )
            ]
        ),
        MULTIPART,
        400,
        "invalid_upload",
    ),
    "huge-part-without-a-name": (multipart([([TEXT], b"x" * 3_000_000)]), MULTIPART, 413, "file_too_large"),
    "huge-ignored-part": (
        multipart([([disposition(name=b"junk"), TEXT], b"x" * 3_000_000)]),
        MULTIPART,
        413,
        "file_too_large",
    ),
    "file-part-without-a-filename-over-the-cap": (
        multipart([([disposition(), TEXT], b"x" * (MAX_UPLOAD_KB * 1024 + 1))]),
        MULTIPART,
        413,
        "file_too_large",
    ),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
async def test_multipart_bombs_are_rejected(api: Api, case: str) -> None:
    body, content_type, status, code = BOMBS[case]
    async with api.unchanged():
        await expect_problem(await post_multipart(api, body, content_type), status, code)


async def stream_until_answered(api: Api, chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """POST a chunked multipart body from an endless source until the server answers; returns the bytes
    sent and the response head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.client.server.port)
    head = (
        f"POST {upload_url(api)} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MULTIPART}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    writer.write(head.encode())
    answer = asyncio.ensure_future(reader.read(65536))
    sent = 0
    try:
        for chunk in chunks:
            if answer.done() or sent >= STREAM_CAP_BYTES:
                break
            if not chunk:
                continue  # a zero-size chunk would end the body
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
            await asyncio.sleep(0)
    except ConnectionError:
        pass  # the server answered and closed while this side was still sending
    try:
        data = await asyncio.wait_for(answer, RESPONSE_TIMEOUT_SECONDS)
    finally:
        writer.close()
    return sent, data


ENDLESS: dict[str, tuple[bytes, bytes, int]] = {
    "empty-parts": (
        b"",
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="junk"\r\n\r\n\r\n',
        400,
    ),
    "ignored-part": (b"--" + BOUNDARY + b"\r\n" + disposition(name=b"junk") + b"\r\n\r\n", b"x" * 65536, 413),
    "file-part": (
        b"--" + BOUNDARY + b"\r\n" + disposition(b'; filename="a.txt"') + b"\r\n" + TEXT + b"\r\n\r\n",
        b"x" * 65536,
        413,
    ),
    "part-header": (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="junk"; x="',
        b"a" * 16384,
        400,
    ),
    "part-headers": (b"--" + BOUNDARY + b"\r\n", b"X-Filler: y\r\n" * 1000, 400),
}


@pytest.mark.parametrize("case", sorted(ENDLESS))
async def test_an_endless_chunked_upload_is_cut_off(api: Api, case: str) -> None:
    """Bounded work: the server answers a 4xx long before an endless body ends."""
    first, repeated, status = ENDLESS[case]
    async with api.unchanged():
        sent, data = await stream_until_answered(api, itertools.chain([first], itertools.repeat(repeated)))
    status_line = data.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 %d " % status), data[:300]
    assert b"application/problem+json" in data
    assert sent < STREAM_CAP_BYTES, "the server read the whole endless body"


async def test_a_declared_oversized_body_is_413_before_it_is_sent(api: Api) -> None:
    """A Content-Length over the size cap is refused from the header alone: no byte of the body is sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.client.server.port)
    head = (
        f"POST {upload_url(api)} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {MULTIPART}\r\n"
        f"Content-Length: {10 * 1024**3}\r\n\r\n"
    )
    async with api.unchanged():
        writer.write(head.encode())
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(65536), RESPONSE_TIMEOUT_SECONDS)
        finally:
            writer.close()
    assert data.startswith(b"HTTP/1.1 413 "), data[:300]
    assert b"application/problem+json" in data and b'"code":"file_too_large"' in data
