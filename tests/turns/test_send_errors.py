"""Every pre-stream failure of `POST …/messages:stream` is problem+json, opens no stream, writes nothing.

Checked in the original's order (original-api.md §4): bad bodies, chat 404, model 400, idempotency 409,
parallel guard 409, attachments / images 400, quota 429 (with quota_scope), web search 400, input 422,
images disabled 400 / no vision 415. Failures after the turn row exists (context budget, provider
resolution) finalize the turn at once and answer the problem too.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from minichat_host.plugins.types import KillSwitches
from turns.conftest import PREFIX, Harness, seed_attachment

PROBLEM = "application/problem+json"


def assert_problem(
    response_status: int, headers: dict[str, str], body: dict[str, Any], status: int, code: str
) -> None:
    assert response_status == status, body
    assert headers["content-type"].startswith(PROBLEM)
    assert body["status"] == status and body["code"] == code
    for member in ("type", "title", "detail"):
        assert isinstance(body[member], str)


async def expect_problem(
    harness: Harness, chat_id: str, status: int, code: str, **request: Any
) -> dict[str, Any]:
    before = await harness.counts()
    response = await harness.client.post(f"{PREFIX}/chats/{chat_id}/messages:stream", **request)
    body = await response.json(content_type=None)
    assert_problem(response.status, {k.lower(): v for k, v in response.headers.items()}, body, status, code)
    assert await harness.counts() == before, "a rejected send wrote something"
    result: dict[str, Any] = body
    return result


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"json": {"content": ""}}, 400, "invalid_request"),
        ({"json": {"content": "   \n\t "}}, 400, "invalid_request"),
        ({"json": {}}, 422, "validation_error"),
        ({"json": {"content": 5}}, 422, "validation_error"),
        ({"json": {"content": "hi", "request_id": "not-a-uuid"}}, 422, "validation_error"),
        ({"json": {"content": "hi", "unknown": 1}}, 422, "validation_error"),
        ({"json": {"content": "hi", "web_search": {}}}, 422, "validation_error"),
        ({"json": {"content": "hi", "attachment_ids": [str(uuid.uuid4())] * 21}}, 422, "validation_error"),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
        ({"data": b"content=hi", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
    ],
)
async def test_bad_bodies(harness: Harness, request_kwargs: dict[str, Any], status: int, code: str) -> None:
    chat_id = await harness.create_chat()
    await expect_problem(harness, chat_id, status, code, **request_kwargs)


async def test_bad_path_and_unknown_chat(harness: Harness, make_harness: Any) -> None:
    response = await harness.client.post(f"{PREFIX}/chats/not-a-uuid/messages:stream", json={"content": "hi"})
    assert response.status == 400 and (await response.json(content_type=None))["code"] == "invalid_uuid"
    await expect_problem(harness, str(uuid.uuid4()), 404, "chat_not_found", json={"content": "hi"})
    chat_id = await harness.create_chat()
    # Another user's chat is 404 too (never 403, never its data).
    other = await make_harness(auth={"dev_user_id": str(uuid.uuid4())})
    await expect_problem(other, chat_id, 404, "chat_not_found", json={"content": "hi"})


async def test_chat_model_no_longer_enabled(harness: Harness) -> None:
    chat_id = await harness.create_chat("local-standard")
    harness.recorder.set_model("local-standard", enabled=False)
    await expect_problem(harness, chat_id, 400, "invalid_model", json={"content": "hi"})


async def test_quota_exhausted_is_429_with_scope_and_writes_nothing(harness: Harness) -> None:
    chat_id = await harness.create_chat("local-premium")
    harness.recorder.standard, harness.recorder.premium = (
        harness.recorder.standard.__class__(limit_daily_credits_micro=10, limit_monthly_credits_micro=10),
    ) * 2
    body = await expect_problem(harness, chat_id, 429, "quota_exceeded", json={"content": "hi"})
    assert body["quota_scope"] == "tokens"
    assert body["title"] == "quota_exceeded"


async def test_web_search_kill_switch(harness: Harness) -> None:
    chat_id = await harness.create_chat()
    harness.recorder.kill_switches = KillSwitches(disable_web_search=True)
    await expect_problem(
        harness, chat_id, 400, "web_search_disabled", json={"content": "hi", "web_search": {"enabled": True}}
    )
    # Without web search the same chat works.
    streamed = await harness.stream(chat_id, {"content": "hi", "web_search": {"enabled": False}})
    assert streamed.terminal.event == "done"


async def test_input_too_long(harness: Harness) -> None:
    chat_id = await harness.create_chat("short-input")
    await expect_problem(harness, chat_id, 422, "input_too_long", json={"content": "x" * 2000})


async def test_attachment_rules(harness: Harness) -> None:
    chat_id = await harness.create_chat()
    ready = await seed_attachment(harness.db, chat_id)
    pending = await seed_attachment(harness.db, chat_id, status="pending")
    deleted = await seed_attachment(harness.db, chat_id, deleted=True)
    foreign = await seed_attachment(harness.db, chat_id, user_id=uuid.uuid4())
    other_chat = await harness.create_chat()
    elsewhere = await seed_attachment(harness.db, other_chat)
    for ids in ([ready, ready], [pending], [deleted], [foreign], [elsewhere], [str(uuid.uuid4())]):
        await expect_problem(
            harness, chat_id, 400, "invalid_attachment", json={"content": "hi", "attachment_ids": ids}
        )
    images = [await seed_attachment(harness.db, chat_id, kind="image") for _ in range(5)]
    await expect_problem(
        harness, chat_id, 400, "too_many_images", json={"content": "hi", "attachment_ids": images}
    )
    harness.recorder.kill_switches = KillSwitches(disable_images=True)
    await expect_problem(
        harness, chat_id, 400, "images_disabled", json={"content": "hi", "attachment_ids": images[:1]}
    )
    harness.recorder.kill_switches = KillSwitches()
    harness.recorder.set_model("local-standard", multimodal_capabilities=[])
    await expect_problem(
        harness, chat_id, 415, "unsupported_media", json={"content": "hi", "attachment_ids": images[:1]}
    )
    # A valid attachment is linked to the user message.
    streamed = await harness.stream(chat_id, {"content": "see file", "attachment_ids": [ready]})
    assert streamed.terminal.event == "done"
    listed = await (await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")).json()
    user = next(m for m in listed["items"] if m["role"] == "user")
    assert [a["attachment_id"] for a in user["attachments"]] == [ready]


async def test_idempotency_conflicts_and_parallel_guard(harness: Harness) -> None:
    from fakes.openai_server import Script

    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="slow " * 40, token_gap_ms=100))
    running_id = str(uuid.uuid4())
    background = asyncio.create_task(harness.stream(chat_id, {"content": "long", "request_id": running_id}))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        response = await harness.client.get(f"{PREFIX}/chats/{chat_id}/turns/{running_id}")
        if response.status == 200:
            break
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    # Idempotency comes before the parallel guard: the running request_id itself is request_id_conflict.
    await expect_problem(
        harness, chat_id, 409, "request_id_conflict", json={"content": "x", "request_id": running_id}
    )
    await expect_problem(harness, chat_id, 409, "turn_already_running", json={"content": "x"})
    streamed = await background
    assert streamed.terminal.event == "done"

    # Failed and cancelled request_ids are never reusable either.
    failed_id = str(uuid.uuid4())
    harness.fake.script(Script.server_error())
    failed = await harness.stream(chat_id, {"content": "x", "request_id": failed_id})
    assert failed.terminal.event == "error"
    await expect_problem(
        harness, chat_id, 409, "request_id_conflict", json={"content": "x", "request_id": failed_id}
    )


async def test_context_budget_failure_finalizes_the_turn(harness: Harness) -> None:
    chat_id = await harness.create_chat("tiny-ctx")
    request_id = str(uuid.uuid4())
    response = await harness.client.post(
        f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "y" * 3000, "request_id": request_id}
    )
    body = await response.json(content_type=None)
    assert response.status == 422 and body["code"] == "context_budget_exceeded"
    status = await harness.turn(chat_id, request_id)
    assert status["state"] == "error" and status["error_code"] == "context_budget_exceeded"
    assert await harness.reserved() == 0
    await harness.delivered(1)
    (usage,) = harness.recorder.usage
    assert (usage.billing_outcome, usage.settlement_method, usage.actual_credits_micro) == (
        "failed",
        "released",
        0,
    )
    rows = await harness.usage_rows()
    assert all(r["spent"] == 0 and r["reserved"] == 0 for r in rows.values())


async def test_unresolvable_provider_finalizes_the_turn(harness: Harness) -> None:
    chat_id = await harness.create_chat("no-provider")
    request_id = str(uuid.uuid4())
    response = await harness.client.post(
        f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "hi", "request_id": request_id}
    )
    body = await response.json(content_type=None)
    assert response.status == 502 and body["code"] == "provider_error"
    status = await harness.turn(chat_id, request_id)
    assert status["state"] == "error" and status["error_code"] == "provider_error"
    assert await harness.reserved() == 0
    await harness.delivered(1)
