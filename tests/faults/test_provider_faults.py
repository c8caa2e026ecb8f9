"""Provider faults not covered by tests/turns/test_stream_faults.py (which has 500 / 429 before the first
token, `response.failed` and a dropped connection mid-stream, a stall past the read timeout and context
length on the Responses API): connection refused, malformed SSE, a stream that ends with no terminal event,
an `error` event mid-stream, a stall before the response headers, 503 and 401 answers — and the whole
fault matrix again on a Chat Completions (`openai_chat`) provider.

Each case checks the SSE grammar and the `error` event's code, the turn's state and error code, that the
user message stays and no assistant message is stored, the quota settled per the billing table (the
reserve released; provider errors without reported usage are charged the *estimated* minimum), exactly
one usage and one audit event, and that the chat takes the next message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fakes.openai_server import Script
from turns.conftest import PREFIX, Harness, assert_grammar
from turns.recorder import Recorder, model

from minichat_host.domain.credits import credits_micro

STANDARD_IN, STANDARD_OUT = 1_000_000, 3_000_000

# (case, model, script for the failing call or None when nothing answers, expected error code)
FAULTS: list[tuple[str, str, Script | None, str]] = [
    ("responses: connection refused", "dead-standard", None, "provider_error"),
    (
        "responses: malformed event",
        "fake-standard",
        Script(text="a b c d", malformed_after=2),
        "provider_error",
    ),
    (
        "responses: stream ends without a terminal event",
        "fake-standard",
        Script(text="a b c d", fail_after=2, fail_mode="eof"),
        "provider_error",
    ),
    (
        "responses: rate-limit error event mid-stream",
        "fake-standard",
        Script(text="a b c d", fail_after=2, fail_mode="error_event", error_code="rate_limit_exceeded"),
        "rate_limited",
    ),
    (
        "responses: stall before the headers",
        "fake-standard",
        Script(stall_before_headers=True, stall_seconds=6),
        "provider_timeout",
    ),
    ("responses: 503 before the first token", "fake-standard", Script.http_error(503), "provider_error"),
    ("responses: 401 bad key", "fake-standard", Script.http_error(401, "invalid_api_key"), "provider_error"),
    ("chat: connection refused", "deadchat-standard", None, "provider_error"),
    ("chat: 500 before the first token", "chat-standard", Script.server_error(), "provider_error"),
    ("chat: 429 before the first token", "chat-standard", Script.rate_limited(), "rate_limited"),
    (
        "chat: connection dropped mid-stream",
        "chat-standard",
        Script(text="a b c d", fail_after=2, fail_mode="drop"),
        "provider_error",
    ),
    (
        "chat: stream ends without [DONE]",
        "chat-standard",
        Script(text="a b c d", fail_after=2, fail_mode="eof"),
        "provider_error",
    ),
    (
        "chat: error chunk mid-stream",
        "chat-standard",
        Script(text="a b c d", fail_after=2, fail_mode="error_event"),
        "provider_error",
    ),
    ("chat: malformed chunk", "chat-standard", Script(text="a b c d", malformed_after=2), "provider_error"),
    (
        "chat: stall past the read timeout",
        "chat-standard",
        Script(text="a b c", stall_at=1, stall_seconds=6),
        "provider_timeout",
    ),
]


@pytest.fixture
async def harness(make_app: Callable[..., Any], closed_port_url: str, fake_openai: Any) -> Harness:
    recorder = Recorder()
    recorder.versions[1] += [
        model("chat-standard", provider_id="fakechat"),
        model("dead-standard", provider_id="dead"),
        model("deadchat-standard", provider_id="deadchat"),
    ]
    upstream = {"api_key": "sk-test", "read_timeout_seconds": 1.5, "connect_timeout_seconds": 2.0}
    result: Harness = await make_app(
        recorder,
        providers={
            "fakechat": {"kind": "openai_chat", "base_url": fake_openai.base_url, **upstream},
            "dead": {"kind": "openai_responses", "base_url": closed_port_url, **upstream},
            "deadchat": {"kind": "openai_chat", "base_url": closed_port_url, **upstream},
        },
    )
    return result


@pytest.mark.parametrize(("case", "model_id", "script", "code"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_provider_fault(
    harness: Harness, case: str, model_id: str, script: Script | None, code: str
) -> None:
    chat_id = await harness.create_chat(model_id)
    if script is not None:
        harness.fake.script(script)
    request_id = str(uuid.uuid4())
    streamed = await harness.stream(chat_id, {"content": "hello", "request_id": request_id})
    assert streamed.status == 200, streamed.problem
    assert_grammar(streamed.frames)
    assert streamed.terminal.event == "error", streamed.frames
    assert streamed.terminal.data["code"] == code, streamed.terminal.data
    assert "127.0.0.1" not in streamed.terminal.data["message"]  # no upstream details for the client

    status = await harness.turn(chat_id, request_id)
    assert (status["state"], status.get("error_code")) == ("error", code)
    assert "assistant_message_id" not in status
    listed = await (await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")).json()
    assert [m["role"] for m in listed["items"]] == ["user"]

    # Billing table: a provider error without reported usage is settled on the estimate, reserve released.
    turn = await harness.turn_row(chat_id, request_id)
    assert turn.reserve_tokens and turn.max_output_tokens_applied and turn.minimal_generation_floor_applied
    estimated_in = turn.reserve_tokens - turn.max_output_tokens_applied
    expected = credits_micro(estimated_in, turn.minimal_generation_floor_applied, STANDARD_IN, STANDARD_OUT)
    rows = await harness.usage_rows()
    assert rows and all(r["reserved"] == 0 and r["spent"] == expected for r in rows.values()), rows
    await harness.delivered(1)
    (usage,) = harness.recorder.usage
    assert (usage.terminal_state, usage.billing_outcome, usage.settlement_method) == (
        "failed",
        "failed",
        "estimated",
    )
    assert usage.actual_credits_micro == expected
    (audit,) = harness.recorder.turn_audits()
    assert (audit.event_type, audit.error_code) == ("turn_failed", code)

    # The chat is free again: the next message is answered (a dead provider stays dead: use the fake).
    next_chat = chat_id if script is not None else await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="All good now."))
    recovered = await harness.stream(next_chat, {"content": "again"})
    assert recovered.terminal.event == "done", recovered.frames
    assert recovered.text == "All good now."
