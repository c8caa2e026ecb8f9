"""The orphan watchdog (invariant 13): stale running turns become failed / orphan_timeout, settled as
estimated on their own periods and policy version; the UPDATE re-checks staleness and deletion; on
PostgreSQL only the holder of the advisory lock scans."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from minichat_host import constants
from minichat_host.db.repos import turns as turns_repo
from minichat_host.db.tables import chat_turns
from minichat_host.domain.credits import credits_micro
from minichat_host.domain.finalize import TurnOutcome
from minichat_host.domain.watchdog import OrphanWatchdog
from minichat_host.outbox.tables import outbox_body
from turns.builders import running_turn
from turns.conftest import Harness, utc_now

STANDARD_IN, STANDARD_OUT = 1_000_000, 3_000_000
TIMEOUT = 300.0


def watchdog(harness: Harness, clock: Callable[[], dt.datetime] = utc_now) -> OrphanWatchdog:
    return OrphanWatchdog(
        database=harness.db,
        outbox=harness.outbox,
        policy=harness.service._policy,
        finalizer=harness.service.finalizer,
        config=harness.service._config,
        clock=clock,
    )


async def test_stale_turn_is_finalized_and_settled_estimated(harness: Harness) -> None:
    started = utc_now() - dt.timedelta(seconds=TIMEOUT + 60)
    stale = await running_turn(harness, started_at=started)
    fresh = await running_turn(harness)
    # The policy moved on; the watchdog prices with the turn's applied version.
    harness.recorder.add_version(harness.recorder.versions[1])
    harness.recorder.set_model("local-standard", output_tokens_credit_multiplier_micro=77_000_000)

    assert await watchdog(harness).scan_once() == 1
    row = await harness.turn_row(stale.chat_id, str(stale.request_id))
    assert (row.state, row.error_code) == ("failed", "orphan_timeout")
    assert (await harness.turn_row(fresh.chat_id, str(fresh.request_id))).state == "running"
    reserve = stale.ctx.reserve
    assert reserve is not None
    expected = credits_micro(
        reserve.reserve_tokens - reserve.max_output_tokens_applied,
        reserve.minimal_generation_floor_applied,
        STANDARD_IN,
        STANDARD_OUT,
    )
    rows = await harness.usage_rows()
    started_day = str(started.date())
    assert rows[("daily", started_day, "total")]["spent"] == expected
    assert rows[("daily", started_day, "total")]["reserved"] == (
        0 if started.date() != utc_now().date() else fresh.ctx.reserve.reserved_credits_micro  # type: ignore[union-attr]
    )
    await harness.delivered(1)
    (usage,) = harness.recorder.usage
    assert (usage.terminal_state, usage.billing_outcome, usage.settlement_method) == (
        "failed",
        "aborted",
        "estimated",
    )
    assert usage.actual_credits_micro == expected and usage.usage is None
    (audit,) = harness.recorder.turn_audits()
    assert audit.event_type == "turn_failed" and audit.error_code == "orphan_timeout"
    assert audit.policy_decisions.quota.decision == "unknown"
    # The stream of a turn the watchdog took cannot finalize it again.
    lost = await harness.service.finalizer.finalize(stale.ctx, TurnOutcome(state="completed", text="late"))
    assert not lost.won


async def test_update_rechecks_progress_and_deletion(harness: Harness) -> None:
    old = utc_now() - dt.timedelta(seconds=TIMEOUT + 60)
    progressed = await running_turn(harness, started_at=old)
    deleted = await running_turn(harness, started_at=old)
    dog = watchdog(harness)
    candidates = await turns_repo.find_stale_running(
        harness.db, stale_before=utc_now() - dt.timedelta(seconds=TIMEOUT)
    )
    assert {c.id for c in candidates} == {progressed.turn_id, deleted.turn_id}
    # Between the scan and the UPDATE: one turn reports progress, the other is soft-deleted.
    await turns_repo.touch_progress(harness.db, progressed.turn_id, utc_now())
    await harness.db.execute(
        chat_turns.update().where(chat_turns.c.id == deleted.turn_id).values(deleted_at=utc_now())
    )
    stale_after = dt.timedelta(seconds=TIMEOUT)
    for candidate in candidates:
        assert not await dog._finalize(candidate, stale_after)
    states = await harness.db.fetch_all(sa.select(chat_turns.c.state))
    assert [r["state"] for r in states] == ["running", "running"]
    assert await harness.count(outbox_body) == 0


async def test_turn_without_preflight_is_finalized_without_settlement(harness: Harness) -> None:
    old = utc_now() - dt.timedelta(seconds=TIMEOUT + 60)
    await running_turn(harness, started_at=old, preflight=False)
    assert await watchdog(harness).scan_once() == 1
    assert await harness.usage_rows() == {}
    await harness.delivered(1)


# The advisory lock is PostgreSQL-only (SQLite is single-process): run this one on PostgreSQL alone.
@pytest.mark.parametrize("engine_name", ["postgresql"])
async def test_only_the_advisory_lock_holder_scans(harness: Harness) -> None:
    old = utc_now() - dt.timedelta(seconds=TIMEOUT + 60)
    await running_turn(harness, started_at=old)
    url = make_url(str(harness.db.url))
    other = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database=url.database)
    try:
        assert await other.fetchval(
            "SELECT pg_try_advisory_lock($1)", constants.ADVISORY_LOCK_ORPHAN_WATCHDOG
        )
        assert await watchdog(harness).scan_once() == 0
        await other.execute("SELECT pg_advisory_unlock($1)", constants.ADVISORY_LOCK_ORPHAN_WATCHDOG)
        assert await watchdog(harness).scan_once() == 1
        # The scan released its lock: another session can take it again.
        assert await other.fetchval(
            "SELECT pg_try_advisory_lock($1)", constants.ADVISORY_LOCK_ORPHAN_WATCHDOG
        )
    finally:
        await other.close()
