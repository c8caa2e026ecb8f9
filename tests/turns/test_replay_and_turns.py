"""Replay of a completed request_id (no side effects), the turn status endpoint, and the tail-only
mutations retry / edit / delete (original-api.md §5; invariants 6, 9 and 14)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import sqlalchemy as sa
from fakes.openai_server import Script

from minichat_host.db.tables import chat_turns, messages
from minichat_host.plugins.types import TurnDeleteAuditEvent, TurnMutationAuditEvent
from turns.conftest import PREFIX, Harness, assert_grammar, seed_attachment


async def test_replay_has_no_side_effects(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="Stored answer.", input_tokens=50, output_tokens=4))
    request_id = str(uuid.uuid4())
    first = await harness.stream(chat_id, {"content": "q", "request_id": request_id})
    assert first.terminal.event == "done"
    await harness.delivered(1)
    before = (await harness.counts(), await harness.usage_rows(), len(harness.fake.by_op("responses")))
    turn_before = await harness.turn_row(chat_id, request_id)

    replay = await harness.stream(chat_id, {"content": "anything", "request_id": request_id})
    assert_grammar(replay.frames)
    assert [f.event for f in replay.frames] == ["stream_started", "delta", "done"]
    started = replay.frames[0].data
    assert started == {
        "request_id": request_id,
        "message_id": first.frames[0].data["message_id"],
        "is_new_turn": False,
    }
    assert replay.text == "Stored answer."
    done = replay.terminal.data
    assert done["usage"] == {"input_tokens": 50, "output_tokens": 4, "model": "fake-standard"}
    assert done["quota_decision"] == "allow" and "quota_warnings" not in done
    await harness.outbox.run_once()
    after = (await harness.counts(), await harness.usage_rows(), len(harness.fake.by_op("responses")))
    assert after == before
    assert await harness.turn_row(chat_id, request_id) == turn_before
    assert len(harness.recorder.usage) == 1 and len(harness.recorder.turn_audits()) == 1


async def test_replay_is_checked_before_the_parallel_guard(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    completed_id = str(uuid.uuid4())
    assert (
        await harness.stream(chat_id, {"content": "q", "request_id": completed_id})
    ).terminal.event == "done"
    harness.fake.script(Script(text="slow " * 30, token_gap_ms=80))
    running = asyncio.create_task(harness.stream(chat_id, {"content": "long"}))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await harness.count(chat_turns, chat_turns.c.state == "running") == 0:
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    replay = await harness.stream(chat_id, {"content": "q", "request_id": completed_id})
    assert [f.event for f in replay.frames] == ["stream_started", "delta", "done"]
    assert (await running).terminal.event == "done"


async def test_replay_unavailable_after_delete(harness: Harness) -> None:
    chat_id = await harness.create_chat()
    request_id = str(uuid.uuid4())
    await harness.stream(chat_id, {"content": "q", "request_id": request_id})
    assert (await harness.client.delete(f"{PREFIX}/chats/{chat_id}/turns/{request_id}")).status == 204
    # Deleted turns stay readable, and their request_id is never reusable.
    assert (await harness.turn(chat_id, request_id))["state"] == "done"
    response = await harness.client.post(
        f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "q", "request_id": request_id}
    )
    body = await response.json(content_type=None)
    assert response.status == 500 and body["code"] == "replay_unavailable"
    assert response.headers["Content-Type"].startswith("application/problem+json")


async def test_turn_status_errors(harness: Harness, make_harness: Any) -> None:
    chat_id = await harness.create_chat()
    request_id = str(uuid.uuid4())
    await harness.stream(chat_id, {"content": "q", "request_id": request_id})
    for path, status, code in [
        (f"/chats/{uuid.uuid4()}/turns/{request_id}", 404, "chat_not_found"),
        (f"/chats/{chat_id}/turns/{uuid.uuid4()}", 404, "turn_not_found"),
        (f"/chats/{chat_id}/turns/not-a-uuid", 400, "invalid_uuid"),
    ]:
        response = await harness.client.get(f"{PREFIX}{path}")
        assert response.status == status and (await response.json(content_type=None))["code"] == code
    other = await make_harness(auth={"dev_user_id": str(uuid.uuid4())})
    response = await other.client.get(f"{PREFIX}/chats/{chat_id}/turns/{request_id}")
    assert response.status == 404
    # A turn whose requester is someone else (e.g. a system turn) is 403 to the chat owner.
    await harness.db.execute(
        chat_turns.update()
        .where(chat_turns.c.request_id == uuid.UUID(request_id))
        .values(requester_user_id=uuid.uuid4())
    )
    response = await harness.client.get(f"{PREFIX}/chats/{chat_id}/turns/{request_id}")
    assert response.status == 403 and (await response.json(content_type=None))["code"] == "forbidden"
    for method, suffix in (("POST", "/retry"), ("PATCH", ""), ("DELETE", "")):
        kwargs = {"json": {"content": "x"}} if method == "PATCH" else {}
        response = await harness.client.request(
            method, f"{PREFIX}/chats/{chat_id}/turns/{request_id}{suffix}", **kwargs
        )
        assert response.status == 403, method


async def test_mutation_rules(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    first_id, second_id = str(uuid.uuid4()), str(uuid.uuid4())
    await harness.stream(chat_id, {"content": "one", "request_id": first_id})
    await harness.stream(chat_id, {"content": "two", "request_id": second_id})
    before = await harness.counts()
    for method, suffix, kwargs in (
        ("POST", "/retry", {}),
        ("PATCH", "", {"json": {"content": "edited"}}),
        ("DELETE", "", {}),
    ):
        response = await harness.client.request(
            method, f"{PREFIX}/chats/{chat_id}/turns/{first_id}{suffix}", **kwargs
        )
        body = await response.json(content_type=None)
        assert (response.status, body["code"]) == (409, "not_latest_turn"), method
        response = await harness.client.request(
            method, f"{PREFIX}/chats/{chat_id}/turns/{uuid.uuid4()}{suffix}", **kwargs
        )
        assert (response.status, (await response.json(content_type=None))["code"]) == (404, "turn_not_found")
        response = await harness.client.request(
            method, f"{PREFIX}/chats/{uuid.uuid4()}/turns/{second_id}{suffix}", **kwargs
        )
        assert (response.status, (await response.json(content_type=None))["code"]) == (404, "chat_not_found")
    response = await harness.client.patch(
        f"{PREFIX}/chats/{chat_id}/turns/{second_id}", json={"content": "  "}
    )
    assert response.status == 400
    response = await harness.client.patch(f"{PREFIX}/chats/{chat_id}/turns/{second_id}", json={"nope": 1})
    assert response.status == 422
    assert await harness.counts() == before

    # A running turn cannot be mutated (400), however it is addressed.
    harness.fake.script(Script(text="slow " * 30, token_gap_ms=80))
    running_id = str(uuid.uuid4())
    running = asyncio.create_task(harness.stream(chat_id, {"content": "three", "request_id": running_id}))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while (await harness.client.get(f"{PREFIX}/chats/{chat_id}/turns/{running_id}")).status != 200:
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    response = await harness.client.post(f"{PREFIX}/chats/{chat_id}/turns/{running_id}/retry")
    assert (response.status, (await response.json(content_type=None))["code"]) == (400, "invalid_turn_state")
    await running


async def test_retry_edit_delete_flow(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    first_id = str(uuid.uuid4())
    attachment = await seed_attachment(harness.db, chat_id)
    await harness.stream(
        chat_id,
        {"content": "SECRET-ORIGINAL question", "request_id": first_id, "attachment_ids": [attachment]},
    )

    retried = await harness.post_sse(f"/chats/{chat_id}/turns/{first_id}/retry")
    assert_grammar(retried.frames)
    assert retried.terminal.event == "done"
    retry_id = retried.frames[0].data["request_id"]
    assert retry_id != first_id and retried.frames[0].data["is_new_turn"] is True
    old = await harness.turn_row(chat_id, first_id)
    assert old.deleted_at is not None and str(old.replaced_by_request_id) == retry_id
    listed = (await (await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")).json())["items"]
    assert [(m["role"], m["request_id"]) for m in listed] == [("user", retry_id), ("assistant", retry_id)]
    assert listed[0]["content"] == "SECRET-ORIGINAL question"
    assert [a["attachment_id"] for a in listed[0]["attachments"]] == [attachment]

    edited = await harness.post_sse(
        f"/chats/{chat_id}/turns/{retry_id}", method="PATCH", json={"content": "edited question"}
    )
    assert edited.terminal.event == "done"
    edit_id = edited.frames[0].data["request_id"]
    listed = (await (await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")).json())["items"]
    assert [m["content"] for m in listed if m["role"] == "user"] == ["edited question"]

    # Deleted and replaced rows never reach the model's context.
    harness.fake.script(Script(text="ok"))
    await harness.stream(chat_id, {"content": "follow-up"})
    sent = str(harness.fake.last("responses").body["input"])
    assert "SECRET-ORIGINAL" not in sent and "edited question" in sent

    follow_up = (await (await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")).json())["items"]
    last_id = follow_up[-1]["request_id"]
    assert (await harness.client.delete(f"{PREFIX}/chats/{chat_id}/turns/{last_id}")).status == 204
    listed_ids = [
        m["request_id"]
        for m in (await (await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")).json())["items"]
    ]
    assert listed_ids == [edit_id, edit_id]
    deleted = await harness.count(
        messages, messages.c.request_id == uuid.UUID(last_id), messages.c.deleted_at.is_not(None)
    )
    assert deleted == 2

    await harness.delivered(4, extra_audit=3)
    kinds = sorted(
        e.event_type
        for e in harness.recorder.audit
        if isinstance(e, TurnMutationAuditEvent | TurnDeleteAuditEvent)
    )
    assert kinds == ["turn_delete", "turn_edit", "turn_retry"]
    retry_audit = next(e for e in harness.recorder.audit if getattr(e, "event_type", "") == "turn_retry")
    assert (retry_audit.original_request_id, retry_audit.new_request_id) == (first_id, retry_id)
    assert await harness.reserved() == 0


async def test_concurrent_retries_conflict_without_500(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    first_id = str(uuid.uuid4())
    await harness.stream(chat_id, {"content": "one", "request_id": first_id})
    harness.fake.default_script = Script(text="slow " * 10, token_gap_ms=20)
    results = await asyncio.gather(
        *(harness.post_sse(f"/chats/{chat_id}/turns/{first_id}/retry") for _ in range(4))
    )
    statuses = sorted(r.status for r in results)
    assert statuses.count(200) == 1, statuses
    codes = {r.problem["code"] for r in results if r.problem}
    assert codes <= {"not_latest_turn", "generation_in_progress", "turn_not_found"}, codes
    assert all(s in (200, 404, 409) for s in statuses)
    await harness.wait_idle()
    assert await harness.count(chat_turns, chat_turns.c.deleted_at.is_(None)) == 1
    assert await harness.reserved() == 0


async def test_retry_preflight_failure_finalizes_new_turn(harness: Harness) -> None:
    chat_id = await harness.create_chat("local-standard")
    first_id = str(uuid.uuid4())
    await harness.stream(chat_id, {"content": "x" * 600, "request_id": first_id})
    harness.recorder.set_model("local-standard", max_input_tokens=10)
    response = await harness.client.post(f"{PREFIX}/chats/{chat_id}/turns/{first_id}/retry")
    body = await response.json(content_type=None)
    assert (response.status, body["code"]) == (422, "input_too_long")
    rows = await harness.db.fetch_all(sa.select(chat_turns).where(chat_turns.c.deleted_at.is_(None)))
    assert [(r["state"], r["error_code"]) for r in rows] == [("failed", "input_too_long")]
    assert await harness.reserved() == 0
    await harness.delivered(2, extra_audit=1)
