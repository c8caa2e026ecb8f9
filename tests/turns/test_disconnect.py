"""A client that goes away mid-stream cancels the provider call; the turn ends `cancelled`, keeps the
partial text as its assistant message, and is settled per the billing table (aborted / estimated)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
from fakes.openai_server import Script

from minichat_host.domain.credits import credits_micro
from turns.conftest import PREFIX, Harness

STANDARD_IN, STANDARD_OUT = 1_000_000, 3_000_000


async def read_frames_until(response: Any, wanted: str) -> list[tuple[str, dict[str, Any]]]:
    frames: list[tuple[str, dict[str, Any]]] = []
    while True:
        block = (await response.content.readuntil(b"\n\n")).decode()
        lines = [line for line in block.strip("\n").split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        event = lines[0].removeprefix("event: ")
        frames.append((event, msgspec.json.decode(lines[1].removeprefix("data: "))))
        if event == wanted:
            return frames


async def test_disconnect_mid_stream_keeps_partial_text(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="word " * 200, token_gap_ms=30))
    request_id = str(uuid.uuid4())
    response = await harness.client.post(
        f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "talk", "request_id": request_id}
    )
    frames = await read_frames_until(response, "delta")
    frames += await read_frames_until(response, "delta")
    seen = "".join(data["content"] for event, data in frames if event == "delta")
    message_id = frames[0][1]["message_id"]
    response.close()

    status = await harness.wait_terminal(chat_id, request_id)
    assert status["state"] == "cancelled" and "error_code" not in status
    assert status["assistant_message_id"] == message_id
    record = harness.fake.last("responses")
    assert await record.wait_finished() != "completed"  # the upstream request was aborted
    listed = await (await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")).json()
    assistant = [m for m in listed["items"] if m["role"] == "assistant"]
    assert len(assistant) == 1 and assistant[0]["id"] == message_id
    assert assistant[0]["content"].startswith(seen) and len(assistant[0]["content"]) < len("word " * 200)

    turn = await harness.turn_row(chat_id, request_id)
    assert turn.reserve_tokens and turn.max_output_tokens_applied and turn.minimal_generation_floor_applied
    expected = credits_micro(
        turn.reserve_tokens - turn.max_output_tokens_applied,
        turn.minimal_generation_floor_applied,
        STANDARD_IN,
        STANDARD_OUT,
    )
    rows = await harness.usage_rows()
    assert all(r["reserved"] == 0 and r["spent"] == expected for r in rows.values())
    await harness.delivered(1)
    (usage,) = harness.recorder.usage
    assert (usage.terminal_state, usage.billing_outcome, usage.settlement_method) == ("cancelled", "aborted", "estimated")

    # The chat is free again; the cancelled request_id is not reusable.
    again = await harness.client.post(
        f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "x", "request_id": request_id}
    )
    assert again.status == 409
    assert (await harness.stream(chat_id, {"content": "next"})).terminal.event == "done"


async def test_disconnect_before_the_first_token(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="late answer", ttft_ms=4000))
    request_id = str(uuid.uuid4())
    response = await harness.client.post(
        f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "hi", "request_id": request_id}
    )
    frames = await read_frames_until(response, "ping")  # pings flow while waiting for the first token
    assert [event for event, _ in frames][0] == "stream_started"
    response.close()
    status = await harness.wait_terminal(chat_id, request_id)
    assert status["state"] == "cancelled" and "assistant_message_id" not in status
    assert await harness.reserved() == 0
    listed = await (await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")).json()
    assert [m["role"] for m in listed["items"]] == ["user"]


async def test_pings_only_before_the_first_delta(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="a b c d", ttft_ms=700, token_gap_ms=300))
    streamed = await harness.stream(chat_id, {"content": "hi"})
    names = [f.event for f in streamed.frames]
    assert names[0] == "stream_started" and "ping" in names
    first_delta = names.index("delta")
    assert "ping" not in names[first_delta:]
    assert all(f.data == {} for f in streamed.named("ping"))


async def test_shutdown_cancels_live_turns(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="word " * 200, token_gap_ms=30))
    request_id = str(uuid.uuid4())
    response = await harness.client.post(
        f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "talk", "request_id": request_id}
    )
    await read_frames_until(response, "delta")
    await harness.service.aclose(grace_seconds=10)
    turn = await harness.turn_row(chat_id, request_id)
    assert turn.state == "cancelled" and turn.assistant_message_id is not None
    assert await harness.reserved() == 0
    response.close()
    await asyncio.sleep(0)
