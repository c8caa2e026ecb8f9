"""A send's provider request leaves inside the turn's transaction, before the reserve, the user message and
the turn are written and committed (their writes overlap the provider's time to first token).

Until the commit the run relays, records and finalizes nothing; when the transaction fails after the
request left, the run is abandoned: the upstream request is aborted and nothing of the turn remains.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import types
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from fakes.openai_server import DEFAULT_API_KEY, Script

from minichat_host.db.tables import messages
from minichat_host.outbox.scheduler import OutboxTransaction
from turns.conftest import PREFIX, Harness

# Triggers that fail, or slow down, the insert of a user message with a given content (test-only DDL).
_SQLITE_FAIL = (
    "CREATE TRIGGER test_fail_message BEFORE INSERT ON messages WHEN NEW.content = 'boom' "
    "BEGIN SELECT RAISE(ABORT, 'boom'); END"
)
_PG_FUNCTION = """
CREATE FUNCTION test_message_trigger() RETURNS trigger AS $$
BEGIN
    IF NEW.content = 'boom' THEN RAISE EXCEPTION 'boom'; END IF;
    IF NEW.content = 'slow' THEN PERFORM pg_sleep(0.3); END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql
"""
_PG_TRIGGER = (
    "CREATE TRIGGER test_message_trigger BEFORE INSERT ON messages "
    "FOR EACH ROW EXECUTE FUNCTION test_message_trigger()"
)


async def _install_triggers(harness: Harness) -> None:
    if harness.db.url.dialect == "sqlite":
        await harness.db.execute(sa.text(_SQLITE_FAIL))
    else:
        await harness.db.execute(sa.text(_PG_FUNCTION))
        await harness.db.execute(sa.text(_PG_TRIGGER))


async def _drop_triggers(harness: Harness) -> None:
    if harness.db.url.dialect == "sqlite":
        await harness.db.execute(sa.text("DROP TRIGGER test_fail_message"))
    else:
        await harness.db.execute(sa.text("DROP TRIGGER test_message_trigger ON messages"))
        await harness.db.execute(sa.text("DROP FUNCTION test_message_trigger()"))


async def test_a_transaction_failing_after_the_request_left_abandons_the_run(harness: Harness) -> None:
    chat_id = await harness.create_chat("fake-standard")
    await _install_triggers(harness)
    try:
        before = await harness.counts()
        harness.fake.script(Script(text="never relayed", ttft_ms=400))
        response = await harness.client.post(
            f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "boom"}
        )
        body = await response.json(content_type=None)
        assert response.status == 500 and body["code"] == "internal_error", body

        # The request had left before the insert failed, and the abandoned run aborted it. On SQLite the
        # whole transaction is one step of the loop the fake shares, so the fake finds the connection
        # closed before its handler runs; on PostgreSQL the insert's round trip lets it start.
        recorded = harness.fake.by_op("responses")
        if harness.db.url.dialect == "postgresql":
            (record,) = recorded
            assert await record.wait_finished() == "client_disconnected"
        else:
            assert [await r.wait_finished() for r in recorded] == ["client_disconnected"] * len(recorded)
        await harness.wait_idle()
        assert harness.service.active_runs == 0
        await asyncio.sleep(0.2)  # an outbox pass: nothing may arrive
        assert await harness.counts() == before
        assert await harness.reserved() == 0
        assert harness.recorder.usage == [] and harness.recorder.turn_audits() == []
    finally:
        await _drop_triggers(harness)

    # The chat is untouched: the next send runs as usual (on SQLite with the script the fake never used).
    streamed = await harness.stream(chat_id, {"content": "again"})
    assert streamed.terminal.event == "done" and streamed.text
    await harness.delivered(1)


async def test_a_provider_failure_before_the_commit_is_finalized_after_it(harness: Harness) -> None:
    """The provider refuses at once while the transaction is still writing (PostgreSQL: a trigger holds the
    insert for 0.3 s after the request left): the turn is finalized as failed once it is committed."""
    chat_id = await harness.create_chat("fake-standard")
    await _install_triggers(harness)
    try:
        harness.fake.script(Script.server_error())
        request_id = str(uuid.uuid4())
        sending = asyncio.ensure_future(
            harness.stream(chat_id, {"content": "slow", "request_id": request_id})
        )
        for _ in range(1000):  # until the fake has the request (or the send is over)
            if harness.fake.by_op("responses") or sending.done():
                break
            await asyncio.sleep(0.005)
        if harness.db.url.dialect == "postgresql":
            # The provider has the request while the turn is not committed yet (the trigger holds it).
            assert not sending.done()
            assert await harness.count(messages, messages.c.chat_id == uuid.UUID(chat_id)) == 0
        streamed = await sending
        assert streamed.terminal.event == "error", streamed.frames
        assert streamed.terminal.data["code"] == "provider_error"
        assert harness.fake.last("responses").status == 500
        status = await harness.wait_terminal(chat_id, request_id)
        assert status["state"] == "error" and status["error_code"] == "provider_error"
        assert await harness.reserved() == 0
        await harness.delivered(1)
        (usage,) = harness.recorder.usage
        assert usage.billing_outcome == "failed"
    finally:
        await _drop_triggers(harness)


async def test_the_run_does_not_join_the_transaction_it_started_in(harness: Harness) -> None:
    """The pump and the finisher start inside the send's transaction but in the context from before it: the
    finalization's outbox messages wake the sequencer after its own commit (joined to the send's long-gone
    transaction handle, they would wait for the reconciler)."""
    await harness.outbox.run_once()  # the queues are registered; nothing is pending
    chat_id = await harness.create_chat("fake-standard")
    streamed = await harness.stream(chat_id, {"content": "hello"})
    assert streamed.terminal.event == "done"
    await harness.wait_idle()
    assert harness.outbox._dirty, "the finalization's enqueues did not mark their partitions"


def _holders_of_transaction_contexts() -> list[object]:
    """What keeps alive a context in which an outbox transaction is open, other than asyncpg's timers (its
    statement cache keeps one per statement it prepared, its pool one per connection given back, each with
    the context of that moment: bounded, not per stream) and cancelled timers (gone at their due time)."""
    # One pass over the heap for all the contexts: the loop (the app's and the fake's) is blocked meanwhile,
    # and a long block would let the provider's read timeout fire.
    gc.collect()
    contexts = [
        o
        for o in gc.get_objects()
        if isinstance(o, contextvars.Context) and any(isinstance(v, OutboxTransaction) for v in o.values())
    ]
    if not contexts:
        return []
    return [
        holder
        for holder in gc.get_referrers(*contexts)
        if not (
            holder is contexts
            or isinstance(holder, types.FrameType)
            or _is_cancelled_or_asyncpg_timer(holder)
        )
    ]


# uvloop's timer handles are not asyncio's class and do not expose their callback; their repr names it.
_ASYNCPG_TIMERS = (
    "_StatementCache._on_entry_expired",
    "PoolConnectionHolder._deactivate_inactive_connection",
)


def _is_cancelled_or_asyncpg_timer(holder: object) -> bool:
    if isinstance(holder, asyncio.TimerHandle):
        return holder.cancelled() or getattr(holder._callback, "__module__", "").startswith("asyncpg.")
    if type(holder).__module__ == "uvloop.loop" and type(holder).__name__ == "TimerHandle":
        return bool(holder.cancelled()) or any(name in repr(holder) for name in _ASYNCPG_TIMERS)  # type: ignore[attr-defined]
    return False


@pytest.mark.both_loops
async def test_an_open_stream_keeps_nothing_of_the_transaction_it_started_in(make_harness: Any) -> None:
    """Every callback the run registers inside the send's transaction carries the context from before it:
    one that captured the transaction's context kept its outbox handle alive for as long as the stream was
    open (~1 KiB per idle stream, bench/memory.py)."""
    # The heap walk below blocks the loop for a while when the suite has run long: not a read timeout.
    fake = {"kind": "openai_responses", "api_key": DEFAULT_API_KEY, "read_timeout_seconds": 60.0}
    harness: Harness = await make_harness(providers={"fake": fake})
    chat_id = await harness.create_chat("fake-standard")
    harness.fake.script(Script(text="late", ttft_ms=500))
    response = await harness.client.post(f"{PREFIX}/chats/{chat_id}/messages:stream", json={"content": "hi"})
    first = await response.content.readuntil(b"\n\n")
    assert first.startswith(b"event: stream_started")
    assert _holders_of_transaction_contexts() == []
    assert (await response.text()).rstrip().split("\n")[-2] == "event: done"
