"""The orphan watchdog: finalizes running turns that stopped making progress (original-domain.md §2).

Every `orphan_watchdog.scan_interval_secs` it loads up to 100 live running turns whose `last_progress_at`
is at least `timeout_secs` old, oldest first, and finalizes each in its own transaction with an UPDATE that
re-checks all three conditions (still running, not deleted, still stale) — a turn that made progress or was
deleted since the scan is left alone. A winner becomes `failed` / `orphan_timeout`, is settled as
*estimated* (billing outcome `aborted`) on the periods of its `started_at` with the prices of its
`policy_version_applied` — only when the preflight columns are all set — and gets its usage event and
`turn_failed` audit event in the same transaction.

On PostgreSQL only one replica scans at a time: the scan holds `pg_try_advisory_lock` on the connection it
runs on and skips the round when another replica holds it. SQLite is single-process, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Final

import databases

from minichat_host import constants
from minichat_host.config import Config
from minichat_host.db.engine import keep_session_state
from minichat_host.db.repos import quota_ledger, turns
from minichat_host.domain import events
from minichat_host.domain.billing import ORPHAN_TIMEOUT, derive_billing
from minichat_host.domain.finalize import Finalizer, OutboxPort, TurnOutcome
from minichat_host.domain.quota import TurnReserve, find_model, periods_for, settle
from minichat_host.domain.turns import PolicyPort
from minichat_host.plugins.types import ModelCatalogEntry

log = logging.getLogger("minichat.watchdog")

Clock = Callable[[], dt.datetime]
SCAN_LIMIT: Final = 100
UNKNOWN_DECISION: Final = "unknown"


class OrphanWatchdog:
    """Scans for stale running turns and finalizes them; `run()` loops until cancelled."""

    def __init__(
        self,
        *,
        database: databases.Database,
        outbox: OutboxPort,
        policy: PolicyPort,
        finalizer: Finalizer,
        config: Config,
        clock: Clock,
    ) -> None:
        self._db = database
        self._outbox = outbox
        self._policy = policy
        self._finalizer = finalizer
        self._config = config
        self._clock = clock
        self._postgres = database.url.dialect in ("postgresql", "postgres")

    async def run(self) -> None:
        """Scan every `scan_interval_secs` (at once again when a scan hit its limit) until cancelled."""
        interval = self._config.orphan_watchdog.scan_interval_secs
        while True:
            try:
                finalized = await self.scan_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("orphan watchdog scan failed")
                finalized = 0
            if finalized < SCAN_LIMIT:
                await asyncio.sleep(interval)

    async def scan_once(self) -> int:
        """One scan; returns how many turns this call finalized (0 when another replica holds the lock)."""
        if not self._postgres:
            return await self._scan()
        async with self._db.connection() as connection:
            # Session-level lock on the connection this task's queries run on, released before it goes back
            # (and the connection closed on its way back, should the unlock not run).
            keep_session_state(connection)
            locked = await connection.fetch_val(
                "SELECT pg_try_advisory_lock(:key)", {"key": constants.ADVISORY_LOCK_ORPHAN_WATCHDOG}
            )
            if not locked:
                return 0
            try:
                return await self._scan()
            finally:
                await connection.execute(
                    "SELECT pg_advisory_unlock(:key)",
                    {"key": constants.ADVISORY_LOCK_ORPHAN_WATCHDOG},
                )

    async def _scan(self) -> int:
        timeout = dt.timedelta(seconds=self._config.orphan_watchdog.timeout_secs)
        candidates = await turns.find_stale_running(
            self._db, stale_before=self._clock() - timeout, limit=SCAN_LIMIT
        )
        finalized = 0
        for turn in candidates:
            try:
                if await self._finalize(turn, timeout):
                    finalized += 1
            except Exception:
                log.exception("orphan watchdog could not finalize turn %s; retrying next scan", turn.id)
        if finalized:
            log.warning("orphan watchdog finalized %d stale turn(s) as %s", finalized, ORPHAN_TIMEOUT)
        return finalized

    async def _finalize(self, turn: turns.TurnRow, stale_after: dt.timedelta) -> bool:
        model = await self._pricing_model(turn)
        user_id = turn.requester_user_id or await turns.chat_owner(self._db, turn.chat_id)
        if user_id is None:
            return False
        effective = turn.effective_model or turn.downgrade_from or ""
        facts = events.TurnFacts(
            tenant_id=turn.tenant_id,
            user_id=user_id,
            chat_id=turn.chat_id,
            turn_id=turn.id,
            request_id=turn.request_id,
            selected_model=effective,
            effective_model=effective,
            policy_version_applied=turn.policy_version_applied or 0,
        )
        outcome = TurnOutcome(
            state="failed",
            error_code=ORPHAN_TIMEOUT,
            error_detail="No progress within the orphan timeout",
            file_search_calls=turn.file_search_completed_count,
            web_search_calls=turn.web_search_completed_count,
            code_interpreter_calls=turn.code_interpreter_completed_count,
        )
        billing = derive_billing("failed", ORPHAN_TIMEOUT, has_usage=False)
        now = self._clock()
        periods = periods_for(turn.started_at)
        # Quota rows before the turn row, the order every turn transaction uses (the quota lock first).
        lock = (
            quota_ledger.user_lock_statement(self._db, turn.tenant_id, turn.requester_user_id)
            if model is not None and turn.requester_user_id is not None
            else None
        )
        async with self._outbox.transaction(first_statement=lock) as tx:
            if not await turns.cas_orphan(self._db, turn.id, stale_before=now - stale_after, now=now):
                return False
            charge = 0
            if model is not None and turn.requester_user_id is not None:
                settlement = settle(
                    method="estimated",
                    reserve=TurnReserve(
                        reserve_tokens=turn.reserve_tokens or 0,
                        max_output_tokens_applied=turn.max_output_tokens_applied or 0,
                        reserved_credits_micro=turn.reserved_credits_micro or 0,
                        minimal_generation_floor_applied=turn.minimal_generation_floor_applied
                        or self._config.estimation_budgets.minimal_generation_floor,
                    ),
                    usage=None,
                    model=model,
                    periods=periods,
                    overshoot_tolerance=self._config.quota.overshoot_tolerance_factor,
                    web_search_calls=turn.web_search_completed_count,
                    code_interpreter_calls=turn.code_interpreter_completed_count,
                )
                await quota_ledger.apply_deltas(
                    self._db, turn.tenant_id, turn.requester_user_id, settlement.bucket_deltas, now=now
                )
                charge = settlement.charge_micro
            await self._finalizer.publish(
                tx,
                facts,
                terminal_state="failed",
                billing=billing,
                charge_micro=charge,
                outcome=outcome,
                quota_decision=UNKNOWN_DECISION,
                downgrade_from=None,
                downgrade_reason=None,
                attachments=(),
                trace_id=None,
                now=now,
            )
        return True

    async def _pricing_model(self, turn: turns.TurnRow) -> ModelCatalogEntry | None:
        """The effective model in the turn's `policy_version_applied` snapshot; None when it cannot settle."""
        if not (
            turn.effective_model
            and turn.requester_user_id
            and turn.reserve_tokens
            and turn.reserve_tokens > 0
            and turn.policy_version_applied is not None
        ):
            return None
        snapshot = await self._policy.snapshot(
            turn.tenant_id, turn.requester_user_id, turn.policy_version_applied
        )
        model = find_model(snapshot, turn.effective_model)
        if model is None:
            log.error(
                "turn %s: model %r is missing from policy version %s; its reserve cannot be priced",
                turn.id,
                turn.effective_model,
                turn.policy_version_applied,
            )
        return model
