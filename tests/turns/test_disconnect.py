"""A client that goes away mid-stream cancels the provider call; the turn ends `cancelled`, keeps the
partial text as its assistant message, and is settled per the billing table (aborted / estimated)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import msgspec
import pytest
from fakes.openai_server import Script

from minichat_host.api import sse
from minichat_host.domain.credits import credits_micro
from turns.conftest import PREFIX, Harness

pytestmark = pytest.mark.both_loops  # the server and the provider client on asyncio's loop and on uvloop's

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
    assert (usage.terminal_state, usage.billing_outcome, usage.settlement_method) == (
        "cancelled",
        "aborted",
        "estimated",
    )

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
    assert frames[0][0] == "stream_started"
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


async def test_progress_is_recorded_while_streaming(make_harness: Any) -> None:
    harness: Harness = await make_harness(streaming={"progress_update_interval_seconds": 0.05})
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="word " * 12, token_gap_ms=40))
    request_id = str(uuid.uuid4())
    assert (
        await harness.stream(chat_id, {"content": "hi", "request_id": request_id})
    ).terminal.event == "done"
    turn = await harness.turn_row(chat_id, request_id)
    assert turn.last_progress_at is not None and turn.last_progress_at > turn.started_at


async def test_app_watchdog_takes_a_stalled_turn(make_harness: Any) -> None:
    harness: Harness = await make_harness(
        orphan_watchdog={"enabled": True, "scan_interval_secs": 0.2, "timeout_secs": 1},
        providers={
            "local": {"kind": "local", "auth": "none"},
            "fake": {
                "kind": "openai_responses",
                "base_url": "",
                "api_key": "sk-test",
                "read_timeout_seconds": 30,
            },
        },
    )
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="too late", stall_at=0, stall_seconds=3))
    request_id = str(uuid.uuid4())
    streamed = await harness.stream(chat_id, {"content": "hi", "request_id": request_id})
    # The watchdog finalized the turn while the provider stalled; the stream's own finalization lost the
    # compare-and-set, so the relay ends the stream with `stream_interrupted`.
    assert streamed.terminal.event == "error" and streamed.terminal.data["code"] == "stream_interrupted"
    status = await harness.turn(chat_id, request_id)
    assert (status["state"], status["error_code"]) == ("error", "orphan_timeout")
    assert await harness.reserved() == 0
    await harness.delivered(1)
    await harness.outbox.run_once()
    assert len(harness.recorder.usage) == 1 and len(harness.recorder.turn_audits()) == 1


async def test_a_quiet_stream_gets_keepalive_comments_then_finishes(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After the first token the domain sends no more `ping` events; a stream that stays quiet longer than the
    # keep-alive interval gets `: ping` comments (SSE clients ignore them) so proxies keep it open.
    monkeypatch.setattr(sse, "COMMENT_KEEPALIVE_SECONDS", 0.3)
    monkeypatch.setattr(sse, "DISCONNECT_POLL_SECONDS", 0.05)
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="one two", stall_at=1, stall_seconds=1.2))
    response = await harness.client.post(
        f"{PREFIX}/chats/{chat_id}/messages:stream",
        json={"content": "hello", "request_id": str(uuid.uuid4())},
    )
    body = (await response.read()).decode()
    blocks = [block for block in body.split("\n\n") if block]
    first_delta = next(i for i, block in enumerate(blocks) if block.startswith("event: delta"))
    comments = [i for i, block in enumerate(blocks) if block == ": ping"]
    assert len(comments) >= 2 and all(i > first_delta for i in comments)
    assert blocks[-1].startswith("event: done")  # nothing after the terminal event
    events = [block.split("\n")[0] for block in blocks if not block.startswith(":")]
    assert events[0] == "event: stream_started" and events.count("event: done") == 1


async def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The provider pump writes each delta itself: a client that stops reading holds it at the write (and so
    # holds back the provider read) until the send timeout aborts the connection; the turn then ends
    # cancelled with what was produced, and its reservation is released.
    monkeypatch.setattr(sse, "SEND_TIMEOUT_SECONDS", 0.5)
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(tokens=["x" * 4000] * 5000))  # 20 MB: more than the socket buffers hold
    request_id = str(uuid.uuid4())
    body = msgspec.json.encode({"content": "talk", "request_id": request_id})
    # A raw socket with a small receive buffer, read once and then left alone (aiohttp's client would keep
    # reading into memory).
    server = harness.client.server
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (server.host, server.port))
        head = (
            f"POST {PREFIX}/chats/{chat_id}/messages:stream HTTP/1.1\r\nHost: {server.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        await loop.sock_sendall(sock, head.encode() + body)
        assert b"200 OK" in await loop.sock_recv(sock, 1024)

        status = await harness.wait_terminal(chat_id, request_id, seconds=30)
        assert status["state"] == "cancelled"
        record = harness.fake.last("responses")
        assert await record.wait_finished() != "completed"  # the upstream request was aborted too
        assert await harness.reserved() == 0
    finally:
        sock.close()


async def test_open_streams_share_one_watch_timer(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every open stream is checked by the app's one timer (not a timer each); the timer stops with the
    # last stream, and a client gone from any of them is still noticed while the model is silent.
    monkeypatch.setattr(sse, "DISCONNECT_POLL_SECONDS", 0.05)
    watches = harness.app[sse.SSE_WATCHES_KEY]
    chats = [await harness.create_chat("fake-standard") for _ in range(3)]
    request_ids = [str(uuid.uuid4()) for _ in chats]
    harness.fake.script(*(Script(text="one two", stall_at=1, stall_seconds=1.0) for _ in chats))
    responses = []
    for chat_id, request_id in zip(chats, request_ids, strict=True):
        response = await harness.client.post(
            f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "hello", "request_id": request_id}
        )
        await read_frames_until(response, "delta")
        responses.append(response)
    assert len(watches) == 3 and watches._handle is not None
    responses[0].close()  # gone while the model stalls: detached by the shared check
    status = await harness.wait_terminal(chats[0], request_ids[0])
    assert status["state"] == "cancelled"
    for response in responses[1:]:
        assert (await response.read()).decode().rstrip().split("\n\n")[-1].startswith("event: done")
    for _ in range(100):
        if len(watches) == 0 and watches._handle is None:
            break
        await asyncio.sleep(0.02)
    assert len(watches) == 0 and watches._handle is None
