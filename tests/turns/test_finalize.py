"""Finalization invariants (original-domain.md §9: 1-5, 7, 10, 11) driven on the finalizer directly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import sqlalchemy as sa

from minichat_host import constants
from minichat_host.db.tables import chat_turns, messages
from minichat_host.domain.credits import credits_micro
from minichat_host.domain.finalize import Finalizer, TurnOutcome
from minichat_host.domain.watchdog import OrphanWatchdog
from minichat_host.outbox.tables import outbox_body
from minichat_host.plugins.types import Usage
from turns.builders import running_turn
from turns.conftest import Harness, utc_now

STANDARD_IN, STANDARD_OUT = 1_000_000, 3_000_000


async def outbox_rows(harness: Harness) -> int:
    return await harness.count(outbox_body)


async def snapshot(harness: Harness) -> tuple[Any, ...]:
    turns_rows = await harness.db.fetch_all(sa.select(chat_turns).order_by(chat_turns.c.id))
    return (
        await harness.usage_rows(),
        await harness.counts(),
        [tuple(str(r[c.name]) for c in chat_turns.c) for r in turns_rows],
    )


async def test_concurrent_finalizers_have_exactly_one_winner(harness: Harness) -> None:
    turn = await running_turn(harness)
    finalizer = harness.service.finalizer
    outcomes = [
        TurnOutcome(state="completed", text="done", usage=Usage(input_tokens=10, output_tokens=5)),
        TurnOutcome(state="cancelled", text="partial"),
        TurnOutcome(state="failed", error_code="provider_error"),
    ] * 3
    later = utc_now() + dt.timedelta(hours=1)
    watchdog = OrphanWatchdog(
        database=harness.db,
        outbox=harness.outbox,
        policy=harness.service._policy,
        finalizer=finalizer,
        config=harness.service._config,
        clock=lambda: later,
    )
    results = await asyncio.gather(
        *(finalizer.finalize(turn.ctx, outcome) for outcome in outcomes), watchdog.scan_once()
    )
    finalize_wins = [r for r in results[:-1] if r.won]  # type: ignore[union-attr]
    assert len(finalize_wins) + results[-1] == 1
    assert await harness.reserved() == 0
    assert await outbox_rows(harness) == 2  # one usage + one audit event
    assert await harness.count(messages, messages.c.role == "assistant") <= 1
    await harness.delivered(1)
    await harness.outbox.run_once()
    assert len(harness.recorder.usage) == 1 and len(harness.recorder.turn_audits()) == 1


async def test_loser_changes_nothing(harness: Harness) -> None:
    turn = await running_turn(harness)
    finalizer = harness.service.finalizer
    won = await finalizer.finalize(
        turn.ctx, TurnOutcome(state="completed", text="a", usage=Usage(input_tokens=3, output_tokens=2))
    )
    assert won.won and won.terminal is not None and won.terminal.event == "done"
    before = await snapshot(harness)
    lost = await finalizer.finalize(turn.ctx, TurnOutcome(state="failed", error_code="provider_error"))
    assert not lost.won and lost.terminal is None
    assert await snapshot(harness) == before


class _FailingTransaction:
    def __init__(self, inner: Any, fail_queue: str) -> None:
        self._inner = inner
        self._fail_queue = fail_queue

    async def enqueue(self, queue: str, key: Any, payload: Any) -> Any:
        result = await self._inner.enqueue(queue, key, payload)
        if queue == self._fail_queue:
            raise RuntimeError("the outbox is broken")
        return result


class _FailingOutbox:
    def __init__(self, inner: Any, fail_queue: str) -> None:
        self._inner = inner
        self._fail_queue = fail_queue

    @contextlib.asynccontextmanager
    async def transaction(self, first_statement: str | None = None) -> AsyncIterator[_FailingTransaction]:
        async with self._inner.transaction(first_statement) as tx:
            yield _FailingTransaction(tx, self._fail_queue)

    @property
    def queues(self) -> Mapping[str, Any]:
        result: Mapping[str, Any] = self._inner.queues
        return result


async def test_winner_commits_everything_or_nothing(harness: Harness) -> None:
    turn = await running_turn(harness)
    before = await snapshot(harness)
    broken = Finalizer(
        database=harness.db,
        outbox=_FailingOutbox(harness.outbox, constants.QUEUE_AUDIT),
        config=harness.service._config,
        clock=utc_now,
    )
    with pytest.raises(RuntimeError):
        await broken.finalize(
            turn.ctx, TurnOutcome(state="completed", text="a", usage=Usage(input_tokens=3, output_tokens=2))
        )
    assert await snapshot(harness) == before
    assert (await harness.turn_row(turn.chat_id, str(turn.request_id))).state == "running"
    result = await harness.service.finalizer.finalize(turn.ctx, TurnOutcome(state="completed", text="a"))
    assert result.won and await harness.reserved() == 0


async def test_message_persistence_failure_finalizes_failed(harness: Harness) -> None:
    await running_turn(harness)  # a chat with messages, so some message id exists
    other = await running_turn(harness)
    # Make the assistant insert fail: its pre-generated id is already taken.
    ctx = dataclasses.replace(other.ctx, assistant_message_id=(await _any_message_id(harness)))
    result = await harness.service.finalizer.finalize(
        ctx, TurnOutcome(state="completed", text="answer", usage=Usage(input_tokens=7, output_tokens=3))
    )
    assert result.won and result.outcome.state == "failed"
    assert result.outcome.error_code == "message_persistence_failed"
    assert result.terminal is not None and result.terminal.event == "error"
    row = await harness.turn_row(other.chat_id, str(other.request_id))
    assert (row.state, row.error_code, row.assistant_message_id) == (
        "failed",
        "message_persistence_failed",
        None,
    )
    await harness.delivered(1)
    (usage,) = harness.recorder.usage
    assert (usage.billing_outcome, usage.settlement_method) == ("failed", "actual")
    assert usage.actual_credits_micro == credits_micro(7, 3, STANDARD_IN, STANDARD_OUT)

    # A cancelled turn whose partial text cannot be stored is retried without it.
    third = await running_turn(harness)
    ctx = dataclasses.replace(third.ctx, assistant_message_id=(await _any_message_id(harness)))
    result = await harness.service.finalizer.finalize(ctx, TurnOutcome(state="cancelled", text="partial"))
    assert result.won and result.outcome.state == "cancelled" and result.outcome.text == ""


async def _any_message_id(harness: Harness) -> uuid.UUID:
    value = await harness.db.fetch_val(sa.select(messages.c.id).limit(1))
    return uuid.UUID(str(value))


BILLING_CASES = [
    ("completed", None, True, "completed", "actual"),
    ("cancelled", None, True, "aborted", "actual"),
    ("cancelled", None, False, "aborted", "estimated"),
    ("failed", "provider_error", True, "failed", "actual"),
    ("failed", "provider_timeout", False, "failed", "estimated"),
    ("failed", "rate_limited", False, "failed", "estimated"),
    ("failed", "web_search_calls_exceeded", False, "failed", "estimated"),
    ("failed", "context_length_exceeded", True, "failed", "released"),
    ("failed", "validation_error", False, "failed", "released"),
    ("failed", "something_unheard_of", False, "failed", "estimated"),
    ("failed", None, False, "failed", "estimated"),
]


@pytest.mark.parametrize(("state", "code", "with_usage", "outcome", "method"), BILLING_CASES)
async def test_billing_table(
    harness: Harness, state: str, code: str | None, with_usage: bool, outcome: str, method: str
) -> None:
    turn = await running_turn(harness)
    usage = Usage(input_tokens=40, output_tokens=9) if with_usage else None
    result = await harness.service.finalizer.finalize(
        turn.ctx,
        TurnOutcome(state=state, error_code=code, text="t", usage=usage),  # type: ignore[arg-type]
    )
    assert result.won and result.billing is not None
    assert (result.billing.billing_outcome, result.billing.settlement_method) == (outcome, method)
    reserve = turn.ctx.reserve
    assert reserve is not None
    expected = {
        "actual": credits_micro(40, 9, STANDARD_IN, STANDARD_OUT),
        "estimated": credits_micro(
            reserve.reserve_tokens - reserve.max_output_tokens_applied,
            reserve.minimal_generation_floor_applied,
            STANDARD_IN,
            STANDARD_OUT,
        ),
        "released": 0,
    }[method]
    assert result.charge_micro == expected and isinstance(result.charge_micro, int)
    rows = await harness.usage_rows()
    assert all(r["reserved"] == 0 and r["spent"] == expected and r["calls"] == 1 for r in rows.values())
    await harness.delivered(1)
    (event,) = harness.recorder.usage
    assert (event.billing_outcome, event.settlement_method, event.actual_credits_micro) == (
        outcome,
        method,
        expected,
    )


async def test_overshoot_beyond_tolerance_is_capped_at_the_reserve(harness: Harness) -> None:
    turn = await running_turn(harness)
    reserve = turn.ctx.reserve
    assert reserve is not None
    huge = Usage(input_tokens=reserve.reserve_tokens, output_tokens=reserve.reserve_tokens)
    result = await harness.service.finalizer.finalize(
        turn.ctx, TurnOutcome(state="completed", text="x", usage=huge)
    )
    assert result.charge_micro == reserve.reserved_credits_micro
    # Within the tolerance the actual price is charged, even above the reserve.
    second = await running_turn(harness)
    reserve = second.ctx.reserve
    assert reserve is not None
    near = Usage(input_tokens=reserve.reserve_tokens, output_tokens=reserve.reserve_tokens // 20)
    result = await harness.service.finalizer.finalize(
        second.ctx, TurnOutcome(state="completed", text="x", usage=near)
    )
    assert result.charge_micro == credits_micro(
        near.input_tokens, near.output_tokens, STANDARD_IN, STANDARD_OUT
    )


async def test_settlement_uses_preflight_periods_and_applied_policy(harness: Harness) -> None:
    yesterday_late = dt.datetime.combine(utc_now().date() - dt.timedelta(days=1), dt.time(23, 59, 59), dt.UTC)
    turn = await running_turn(harness, started_at=yesterday_late)
    # The policy changes (new prices) after the reserve; settlement keeps the applied version's prices.
    harness.recorder.add_version(harness.recorder.versions[1])
    harness.recorder.set_model("local-standard", input_tokens_credit_multiplier_micro=99_000_000)
    result = await harness.service.finalizer.finalize(
        turn.ctx, TurnOutcome(state="completed", text="x", usage=Usage(input_tokens=11, output_tokens=2))
    )
    assert result.charge_micro == credits_micro(11, 2, STANDARD_IN, STANDARD_OUT)
    rows = await harness.usage_rows()
    days = {key[1] for key in rows if key[0] == "daily"}
    assert days == {str(yesterday_late.date())}  # nothing was settled on today's row
    assert all(r["reserved"] == 0 for r in rows.values())


async def test_summary_task_enqueued_when_due(harness: Harness) -> None:
    import msgspec

    from minichat_host.domain.finalize import SummaryTrigger
    from minichat_host.outbox import Outbox

    async def noop(delivery: Any) -> None:
        return None

    outbox = Outbox(harness.db, harness.service._config.outbox, dialect=harness.db.url.dialect)
    for queue in (constants.QUEUE_USAGE, constants.QUEUE_AUDIT, constants.QUEUE_THREAD_SUMMARY):
        outbox.register_queue(
            queue, noop, partitions=harness.service._config.outbox.num_partitions, timeout=5
        )
    await outbox.ensure_queues()
    finalizer = Finalizer(database=harness.db, outbox=outbox, config=harness.service._config, clock=utc_now)
    due = SummaryTrigger(
        messages_truncated=True, assembled_tokens=10, context_window=1000, max_output_applied=100
    )
    turn = await running_turn(harness)
    ctx = dataclasses.replace(turn.ctx, summary=due)
    await finalizer.finalize(ctx, TurnOutcome(state="completed", text="answer"))
    payloads = [
        msgspec.json.decode(r["payload"])
        for r in await harness.db.fetch_all(sa.select(outbox_body.c.payload))
    ]
    tasks = [p for p in payloads if "frozen_target_message_id" in p]
    assert len(tasks) == 1
    assert tasks[0]["frozen_target_message_id"] == str(ctx.assistant_message_id)
    assert tasks[0]["chat_id"] == turn.chat_id and "base_frontier_message_id" not in tasks[0]
    # Not due (nothing truncated, far below the compression threshold): nothing more is enqueued.
    second = await running_turn(harness)
    quiet = dataclasses.replace(due, messages_truncated=False)
    await finalizer.finalize(
        dataclasses.replace(second.ctx, summary=quiet), TurnOutcome(state="completed", text="a")
    )
    payloads = [
        msgspec.json.decode(r["payload"])
        for r in await harness.db.fetch_all(sa.select(outbox_body.c.payload))
    ]
    assert sum("frozen_target_message_id" in p for p in payloads) == 1
