"""Live turns against the fake OpenAI server: completion, provider faults (before the first token,
mid-stream, 429, 500, a stall past the read timeout), tool events and the per-message tool limits.

Each case checks the SSE grammar, the turn's state, the quota (reserve released, charge per the billing
table, integer credits) and that exactly one usage and one audit event were published.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fakes.openai_server import CodeInterpreterScript, Script, WebSearchScript

from minichat_host.domain.credits import credits_micro
from turns.conftest import PREFIX, Harness, assert_grammar

pytestmark = pytest.mark.both_loops  # the server and the provider client on asyncio's loop and on uvloop's

STANDARD_IN, STANDARD_OUT = 1_000_000, 3_000_000
PREMIUM_IN, PREMIUM_OUT = 3_000_000, 15_000_000


async def test_completed_turn_is_billed_on_actual_usage(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-premium")
    harness.fake.script(Script(text="The answer is four.", input_tokens=120, output_tokens=30))
    request_id = str(uuid.uuid4())
    streamed = await harness.stream(chat_id, {"content": "2+2?", "request_id": request_id})
    assert_grammar(streamed.frames)
    assert streamed.text == "The answer is four."
    started = streamed.frames[0].data
    assert started["request_id"] == request_id and started["is_new_turn"] is True
    done = streamed.terminal.data
    assert done["usage"] == {"input_tokens": 120, "output_tokens": 30, "model": "fake-premium"}
    assert (done["effective_model"], done["selected_model"], done["quota_decision"]) == (
        "fake-premium",
        "fake-premium",
        "allow",
    )
    assert done["quota_warnings"] == []
    assert "downgrade_from" not in done and "downgrade_reason" not in done

    # The message is stored under the announced id, with the usage, before `done` was written.
    status = await harness.turn(chat_id, request_id)
    assert status == {
        "request_id": request_id,
        "state": "done",
        "assistant_message_id": started["message_id"],
        "updated_at": status["updated_at"],
    }
    charge = credits_micro(120, 30, PREMIUM_IN, PREMIUM_OUT)
    rows = await harness.usage_rows()
    assert {key[2] for key in rows} == {"total", "tier:premium"}
    for (_, _, bucket), row in rows.items():
        assert row["reserved"] == 0 and row["spent"] == charge and row["calls"] == 1
        assert (row["input"], row["output"]) == ((120, 30) if bucket == "total" else (0, 0))
    await harness.delivered(1)
    (usage,) = harness.recorder.usage
    assert (usage.terminal_state, usage.billing_outcome, usage.settlement_method) == (
        "completed",
        "completed",
        "actual",
    )
    assert usage.actual_credits_micro == charge
    turn = await harness.turn_row(chat_id, request_id)
    assert usage.dedupe_key == f"{turn.tenant_id.hex}/{turn.id.hex}/{turn.request_id.hex}"
    (audit,) = harness.recorder.turn_audits()
    assert audit.event_type == "turn_completed" and audit.usage.input_tokens == 120


FAULTS: list[tuple[str, Script, str]] = [
    ("500 before the first token", Script.server_error(), "provider_error"),
    ("429 before the first token", Script.rate_limited(), "rate_limited"),
    ("failure mid-stream", Script(text="one two three four five", fail_after=2), "provider_error"),
    (
        "connection dropped mid-stream",
        Script(text="one two three four", fail_after=2, fail_mode="drop"),
        "provider_error",
    ),
    (
        "stall past the read timeout",
        Script(text="one two three", stall_at=1, stall_seconds=6),
        "provider_timeout",
    ),
    ("context length", Script.context_length_exceeded(), "context_length_exceeded"),
]


@pytest.mark.parametrize(("case", "script", "code"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_provider_faults(harness: Harness, case: str, script: Script, code: str) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(script)
    request_id = str(uuid.uuid4())
    streamed = await harness.stream(chat_id, {"content": "hello", "request_id": request_id})
    assert streamed.status == 200
    assert_grammar(streamed.frames)
    assert streamed.terminal.event == "error"
    error = streamed.terminal.data
    assert error["code"] == code and error["message"] and error["detail"] == error["message"]
    assert "resp_" not in error["message"]  # no provider identifiers in client-facing text

    status = await harness.turn(chat_id, request_id)
    assert (status["state"], status["error_code"]) == ("error", code)
    assert "assistant_message_id" not in status
    listed = await (await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")).json()
    assert [m["role"] for m in listed["items"]] == ["user"]  # failed turn: the user message stays

    turn = await harness.turn_row(chat_id, request_id)
    assert turn.reserve_tokens and turn.max_output_tokens_applied and turn.minimal_generation_floor_applied
    if code == "context_length_exceeded":
        expected, method = 0, "released"
    else:
        est_in = turn.reserve_tokens - turn.max_output_tokens_applied
        expected, method = (
            credits_micro(est_in, turn.minimal_generation_floor_applied, STANDARD_IN, STANDARD_OUT),
            "estimated",
        )
    rows = await harness.usage_rows()
    assert rows and all(r["reserved"] == 0 and r["spent"] == expected for r in rows.values())
    await harness.delivered(1)
    (usage,) = harness.recorder.usage
    assert (usage.terminal_state, usage.billing_outcome, usage.settlement_method) == (
        "failed",
        "failed",
        method,
    )
    assert usage.actual_credits_micro == expected
    (audit,) = harness.recorder.turn_audits()
    assert audit.event_type == "turn_failed" and audit.error_code == code


async def test_tool_events_citations_and_counters(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="Found it.", tools=[WebSearchScript(), WebSearchScript()]))
    request_id = str(uuid.uuid4())
    streamed = await harness.stream(
        chat_id, {"content": "news?", "request_id": request_id, "web_search": {"enabled": True}}
    )
    assert_grammar(streamed.frames)
    assert streamed.terminal.event == "done"
    tools = [(f.data["phase"], f.data["name"]) for f in streamed.named("tool")]
    assert tools == [("start", "web_search"), ("done", "web_search")] * 2
    citations = streamed.named("citations")
    assert len(citations) == 1 and citations[0].data["items"][0]["source"] == "web"
    assert [f.event for f in streamed.frames][-2:] == ["citations", "done"]
    turn = await harness.turn_row(chat_id, request_id)
    assert turn.web_search_completed_count == 2
    rows = await harness.usage_rows()
    assert rows[next(k for k in rows if k[2] == "total")]["web"] == 2
    sent = harness.fake.last("responses").body
    assert any(tool["type"] == "web_search" for tool in sent["tools"])


@pytest.mark.parametrize(
    ("tools", "body_extra", "code"),
    [
        ([WebSearchScript()] * 3, {"web_search": {"enabled": True}}, "web_search_calls_exceeded"),
    ],
)
async def test_tool_limit_stops_the_provider(
    harness: Harness, tools: list[Any], body_extra: dict[str, Any], code: str
) -> None:
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="a " * 40, token_gap_ms=50, tools=tools))
    request_id = str(uuid.uuid4())
    streamed = await harness.stream(chat_id, {"content": "q", "request_id": request_id, **body_extra})
    assert_grammar(streamed.frames)
    assert streamed.terminal.event == "error" and streamed.terminal.data["code"] == code
    starts = [f for f in streamed.named("tool") if f.data["phase"] == "start"]
    assert len(starts) == 2  # the third start is over the limit and is not relayed
    assert (await harness.turn(chat_id, request_id))["error_code"] == code
    assert await harness.reserved() == 0
    record = harness.fake.last("responses")
    assert await record.wait_finished() != "completed"  # the upstream stream was aborted


async def test_code_interpreter_limit(make_harness: Any) -> None:
    harness: Harness = await make_harness(quota={"code_interpreter_max_calls_per_message": 1})
    chat_id = await harness.create_chat("fake-standard")
    from turns.conftest import seed_attachment

    await seed_attachment(harness.db, chat_id)
    await harness.db.execute("UPDATE attachments SET for_code_interpreter = :yes", {"yes": True})
    harness.fake.script(Script(text="x y", tools=[CodeInterpreterScript(), CodeInterpreterScript()]))
    streamed = await harness.stream(chat_id, {"content": "sum it"})
    assert streamed.terminal.event == "error"
    assert streamed.terminal.data["code"] == "code_interpreter_calls_exceeded"
    assert await harness.reserved() == 0
