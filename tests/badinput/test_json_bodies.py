"""Bad JSON bodies on every operation that takes one (from the OpenAPI table, so a new JSON operation is
covered by itself): too large (Content-Length and chunked), nested too deeply, not UTF-8, the wrong
content type, not an object, unknown members, wrong member types, and text the database may refuse.
Each is a problem+json 4xx with the documented code, and changes nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from badinput.conftest import MAX_JSON_BODY_BYTES, Api, expect_problem
from minichat_host.api.openapi import OPERATIONS, Operation

JSON_OPERATIONS = [op for op in OPERATIONS if op.request is not None]
# A valid body per operation, so one defect at a time is tested.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "createChat": {"title": "ok"},
    "updateChatTitle": {"title": "ok"},
    "sendMessage": {"content": "ok"},
    "editTurn": {"content": "ok"},
    "setReaction": {"reaction": "like"},
}
JSON_HEADERS = {"Content-Type": "application/json"}


def by_id(op: Operation) -> str:
    return op.operation_id


def test_every_json_operation_has_a_valid_body_here() -> None:
    assert {op.operation_id for op in JSON_OPERATIONS} == set(VALID_BODIES)


async def send(api: Api, op: Operation, data: Any, headers: dict[str, str] | None = None) -> Any:
    return await api.client.request(op.method.upper(), api.url(op), data=data, headers=headers)


@pytest.mark.parametrize("op", JSON_OPERATIONS, ids=by_id)
async def test_a_body_over_the_limit_is_413(api: Api, op: Operation) -> None:
    filler = "x" * (MAX_JSON_BODY_BYTES + 1)
    body = ('{"title": "' + filler + '"}').encode()
    async with api.unchanged():
        await expect_problem(await send(api, op, body, JSON_HEADERS), 413, "payload_too_large")


@pytest.mark.parametrize("op", JSON_OPERATIONS, ids=by_id)
async def test_a_chunked_body_over_the_limit_is_413(api: Api, op: Operation) -> None:
    """Without a Content-Length the limit is enforced while reading."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"content": "'
        for _ in range(MAX_JSON_BODY_BYTES // 4096 + 2):
            yield b"x" * 4096
        yield b'"}'

    async with api.unchanged():
        await expect_problem(await send(api, op, chunks(), JSON_HEADERS), 413, "payload_too_large")


NESTED = {
    "array": b"[" * 10_000 + b"]" * 10_000,
    "object": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "inside-a-member": b'{"title":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
}


@pytest.mark.parametrize("op", JSON_OPERATIONS, ids=by_id)
async def test_deeply_nested_json_is_400(api: Api, op: Operation) -> None:
    async with api.unchanged():
        for shape, body in NESTED.items():
            response = await send(api, op, body, JSON_HEADERS)
            assert response.status == 400, (shape, await response.text())
            await expect_problem(response, 400, "invalid_json")


INVALID_UTF8 = {
    "in-a-string": b'{"title": "\xff\xfe"}',
    "before-the-object": b'\xff{"title": "x"}',
    "overlong-encoding": b'{"title": "\xc0\xaf"}',
    "truncated-sequence": b'{"title": "\xe2\x82"}',
    "encoded-surrogate": b'{"title": "\xed\xa0\x80"}',
    "escaped-lone-surrogate": b'{"title": "a\\ud800b"}',
    "latin-1": '{"title": "caf\xe9"}'.encode("latin-1"),
}


@pytest.mark.parametrize("op", JSON_OPERATIONS, ids=by_id)
async def test_invalid_utf8_is_400(api: Api, op: Operation) -> None:
    async with api.unchanged():
        for case, body in INVALID_UTF8.items():
            response = await send(api, op, body, JSON_HEADERS)
            assert response.status == 400, (case, await response.text())
            await expect_problem(response, 400, "invalid_json")


WRONG_CONTENT_TYPES = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "application/octet-stream",
    "",
]


@pytest.mark.parametrize("op", JSON_OPERATIONS, ids=by_id)
async def test_a_wrong_content_type_is_415(api: Api, op: Operation) -> None:
    body = json.dumps(VALID_BODIES[op.operation_id]).encode()
    async with api.unchanged():
        for content_type in WRONG_CONTENT_TYPES:
            response = await send(api, op, body, {"Content-Type": content_type})
            assert response.status == 415, (content_type, await response.text())
            await expect_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("op", JSON_OPERATIONS, ids=by_id)
async def test_a_body_that_is_not_an_object_is_422(api: Api, op: Operation) -> None:
    async with api.unchanged():
        for raw in (b"[]", b"null", b'"text"', b"42", b"true"):
            response = await send(api, op, raw, JSON_HEADERS)
            assert response.status == 422, (raw, await response.text())
            await expect_problem(response, 422, "validation_error")


@pytest.mark.parametrize("op", JSON_OPERATIONS, ids=by_id)
async def test_an_unknown_member_is_422_naming_it(api: Api, op: Operation) -> None:
    body = {**VALID_BODIES[op.operation_id], "is_admin": True}
    async with api.unchanged():
        response = await api.client.request(op.method.upper(), api.url(op), json=body)
        problem = await expect_problem(response, 422, "validation_error")
    assert "is_admin" in problem["detail"]


WRONG_TYPES: dict[str, list[dict[str, Any]]] = {
    "createChat": [{"title": 5}, {"model": ["gpt"]}, {"title": {"a": 1}}],
    "updateChatTitle": [{"title": None}, {"title": 1.5}, {}],
    "sendMessage": [
        {"content": 5},
        {},
        {"content": "x", "request_id": "not-a-uuid"},
        {"content": "x", "attachment_ids": "abc"},
        {"content": "x", "attachment_ids": ["nope"]},
        {"content": "x", "attachment_ids": [None]},
        {"content": "x", "web_search": True},
        {"content": "x", "web_search": {}},
    ],
    "editTurn": [{"content": None}, {}],
    "setReaction": [{"reaction": 1}, {}],
}


@pytest.mark.parametrize("op", JSON_OPERATIONS, ids=by_id)
async def test_wrong_member_types_are_422(api: Api, op: Operation) -> None:
    async with api.unchanged():
        for body in WRONG_TYPES[op.operation_id]:
            response = await api.client.request(op.method.upper(), api.url(op), json=body)
            await expect_problem(response, 422, "validation_error")


async def test_too_many_attachment_ids_is_422(api: Api) -> None:
    op = next(op for op in JSON_OPERATIONS if op.operation_id == "sendMessage")
    body = {"content": "x", "attachment_ids": [api.attachment_id] * 1000}
    async with api.unchanged():
        await expect_problem(await api.client.post(api.url(op), json=body), 422, "validation_error")


BLANK_OR_BAD_TEXT: dict[str, list[dict[str, Any]]] = {
    "createChat": [
        {"title": ""},
        {"title": "   "},
        {"title": "x" * 256},
        {"title": "a\u0000b"},
        {"model": ""},
        {"model": "no-such-model"},
        {"model": "../../etc/passwd"},
    ],
    "updateChatTitle": [{"title": "a\u0000b"}, {"title": "\t\n "}, {"title": "x" * 256}],
    "sendMessage": [{"content": "   "}, {"content": ""}],
    "editTurn": [{"content": ""}, {"content": " \n"}],
    "setReaction": [{"reaction": "love"}, {"reaction": "LIKE"}, {"reaction": "like\u0000"}],
}


@pytest.mark.parametrize("op", JSON_OPERATIONS, ids=by_id)
async def test_blank_or_invalid_text_is_400_on_every_engine(api_any_engine: Api, op: Operation) -> None:
    api = api_any_engine
    async with api.unchanged():
        for body in BLANK_OR_BAD_TEXT[op.operation_id]:
            response = await api.client.request(op.method.upper(), api.url(op), json=body)
            assert response.status == 400, (body, await response.text())
            await expect_problem(response, 400)


@pytest.mark.parametrize("operation_id", ["sendMessage", "editTurn"])
async def test_nul_characters_in_message_content_never_reach_a_500(
    api_any_engine: Api, operation_id: str
) -> None:
    """PostgreSQL text cannot hold NUL; the API must answer a problem (or store the text some other way),
    never fail inside the database."""
    op = next(op for op in JSON_OPERATIONS if op.operation_id == operation_id)
    response = await api_any_engine.client.request(
        op.method.upper(), api_any_engine.url(op), json={"content": "a\u0000b"}
    )
    text = await response.text()
    assert response.status < 500, text[:300]
    if response.status != 200:
        await expect_problem(response, 400)


async def test_attachment_ids_that_are_not_the_chats_are_400(api_any_engine: Api) -> None:
    """Unknown ids, and one of another chat, in one or several ids: rejected before anything is written."""
    api = api_any_engine
    other = await api.client.post("/mini-chat/v1/chats", json={"title": "other"})
    other_chat = (await other.json())["id"]
    op = next(op for op in JSON_OPERATIONS if op.operation_id == "sendMessage")
    cases = [
        [str(uuid.uuid4())],
        [str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())],
        [api.attachment_id, api.attachment_id],
    ]
    async with api.unchanged():
        for ids in cases:
            url = api.url(op, id=other_chat) if ids[0] == api.attachment_id else api.url(op)
            response = await api.client.post(url, json={"content": "x", "attachment_ids": ids})
            assert response.status == 400, (ids, await response.text())
            await expect_problem(response, 400, "invalid_attachment")
