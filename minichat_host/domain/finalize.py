"""Turn finalization: the one transaction that ends a running turn (original-domain.md §2).

Only the caller whose `UPDATE … WHERE state='running'` changes the row (the compare-and-set winner) goes
on, still inside the same transaction, to settle quota on the preflight periods with the
`policy_version_applied` prices, store the assistant message under its pre-generated id, and enqueue the
usage event and the turn audit event (and a thread-summary task when one is due). A loser changes nothing
and gets no terminal event. The SSE `done` / `error` frame is built only after the commit.

A failed assistant-message insert rolls everything back and finalization runs again as `failed` /
`message_persistence_failed` (a cancelled turn: again without the partial text). A database that is
briefly unavailable (SQLite busy, a PostgreSQL restart) is retried a few times; after that the turn stays
`running` and the orphan watchdog settles it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import databases

from minichat_host import constants
from minichat_host.config import Config
from minichat_host.db.engine import is_unavailable_error
from minichat_host.db.repos import quota_ledger, turns
from minichat_host.domain import events
from minichat_host.domain.billing import Billing, derive_billing, usage_reported
from minichat_host.domain.credits import estimate_text_tokens, utf8_len
from minichat_host.domain.models import Period
from minichat_host.domain.quota import QuotaWarning, TurnReserve, quota_status, quota_warnings, settle
from minichat_host.domain.summaries import summary_task_if_due
from minichat_host.plugins.types import AuditAttachment, AuditEnvelope, ModelCatalogEntry, Usage, UserLimits

log = logging.getLogger("minichat.turns")

FinalState = Literal["completed", "failed", "cancelled"]
Clock = Callable[[], dt.datetime]

MESSAGE_PERSISTENCE_FAILED: Final = "message_persistence_failed"
_UNAVAILABLE_RETRIES: Final = 3
_UNAVAILABLE_BACKOFF_SECONDS: Final = 0.2

_DEFAULT_ERROR_MESSAGES: Final[dict[str, str]] = {
    "provider_error": "The model provider returned an error.",
    "provider_timeout": "The model provider did not answer in time.",
    "rate_limited": "The model provider is rate limiting requests; try again shortly.",
    "web_search_calls_exceeded": "The answer needed more web searches than one message may use.",
    "code_interpreter_calls_exceeded": "The answer needed more code runs than one message may use.",
    MESSAGE_PERSISTENCE_FAILED: "The answer could not be stored.",
    "context_length_exceeded": "The conversation is too long for the model.",
}


# --- ports: what finalization needs from the outbox ---------------------------------------------------
class OutboxTransaction(Protocol):
    async def enqueue(self, queue: str, key: uuid.UUID | str | int, payload: Any) -> Any: ...


class OutboxPort(Protocol):
    """The outbox's transaction: a database transaction whose enqueued messages are announced after commit."""

    def transaction(
        self, first_statement: str | None = None
    ) -> AbstractAsyncContextManager[OutboxTransaction]: ...

    @property
    def queues(self) -> Mapping[str, Any]: ...


# --- inputs -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SummaryTrigger:
    """What the thread-summary trigger needs from context assembly (original-domain.md §5)."""

    messages_truncated: bool
    assembled_tokens: int
    context_window: int
    max_output_applied: int


@dataclass(frozen=True, slots=True)
class TurnContext:
    """Everything finalization needs, carried in memory from the preflight of the same turn.

    `model` is the effective model's entry in the `policy_version_applied` snapshot (it prices the
    settlement and picks its buckets); `reserve` is None for a retry/edit turn that failed before its
    preflight back-fill (nothing was reserved, so nothing is settled).
    """

    facts: events.TurnFacts
    assistant_message_id: uuid.UUID
    model: ModelCatalogEntry
    reserve: TurnReserve | None
    periods: tuple[Period, ...]
    limits: UserLimits | None
    quota_decision: Literal["allow", "downgrade"]
    downgrade_from: str | None
    downgrade_reason: str | None
    attachments: tuple[AuditAttachment, ...] = ()
    summary: SummaryTrigger | None = None
    trace_id: str | None = None


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """How the turn ended, as the provider task saw it."""

    state: FinalState
    error_code: str | None = None
    error_detail: str | None = None
    text: str = ""
    usage: Usage | None = None
    provider_response_id: str | None = None
    file_search_calls: int = 0
    web_search_calls: int = 0
    code_interpreter_calls: int = 0
    features_used: tuple[str, ...] = ()
    ttft_ms: int | None = None
    total_ms: int | None = None


@dataclass(frozen=True, slots=True)
class FinalizeResult:
    """`won` False: another finalizer got there first and nothing was written by this call."""

    won: bool
    outcome: TurnOutcome
    billing: Billing | None = None
    charge_micro: int = 0
    quota_warnings: tuple[QuotaWarning, ...] = ()
    terminal: events.SseFrame | None = None


class _MessagePersistenceFailed(Exception):
    pass


class Finalizer:
    """Runs `finalize_turn_cas` for the turns of one app (one database, one outbox)."""

    def __init__(
        self, *, database: databases.Database, outbox: OutboxPort, config: Config, clock: Clock
    ) -> None:
        self._db = database
        self._outbox = outbox
        self._config = config
        self._clock = clock

    async def finalize(self, ctx: TurnContext, outcome: TurnOutcome) -> FinalizeResult:
        """Finalize once; retries as `message_persistence_failed` when storing the answer fails."""
        attempt = outcome
        unavailable = 0
        while True:
            try:
                result = await self._finalize_once(ctx, attempt)
            except _MessagePersistenceFailed as exc:
                log.error(
                    "turn %s: storing the assistant message failed: %s", ctx.facts.turn_id, exc.__cause__
                )
                if attempt.state == "completed":
                    attempt = dataclasses.replace(
                        attempt,
                        state="failed",
                        error_code=MESSAGE_PERSISTENCE_FAILED,
                        error_detail=_DEFAULT_ERROR_MESSAGES[MESSAGE_PERSISTENCE_FAILED],
                    )
                elif attempt.text:
                    attempt = dataclasses.replace(attempt, text="")
                else:
                    raise
                continue
            except Exception as exc:
                retryable = is_unavailable_error(exc) or turns.is_lock_conflict(exc)
                if retryable and unavailable < _UNAVAILABLE_RETRIES:
                    unavailable += 1
                    await asyncio.sleep(_UNAVAILABLE_BACKOFF_SECONDS * unavailable)
                    continue
                raise
            # Without a reserve nothing was settled, so an unlisted code (e.g. quota_exceeded) costs nothing.
            if result.won and result.billing is not None and result.billing.unknown_code and ctx.reserve:
                log.critical(
                    "turn %s finalized failed with unrecognized error code %r; billed as estimated",
                    ctx.facts.turn_id,
                    result.outcome.error_code,
                )
            return result

    async def _finalize_once(self, ctx: TurnContext, outcome: TurnOutcome) -> FinalizeResult:
        facts = ctx.facts
        now = self._clock()
        # Quota rows before the turn row: the order the send transaction takes them in (the user's quota
        # lock is the transaction's first statement).
        lock = (
            quota_ledger.user_lock_statement(self._db, facts.tenant_id, facts.user_id)
            if ctx.reserve is not None
            else None
        )
        async with self._outbox.transaction(first_statement=lock) as tx:
            won = await turns.cas_finish(
                self._db,
                facts.turn_id,
                state=outcome.state,
                error_code=outcome.error_code,
                error_detail=outcome.error_detail,
                provider_response_id=outcome.provider_response_id,
                now=now,
            )
            if not won:
                return FinalizeResult(won=False, outcome=outcome)
            billing = derive_billing(outcome.state, outcome.error_code, usage_reported(outcome.usage))
            charge, warnings = await self._settle(ctx, outcome, billing, now)
            if outcome.state == "completed" or (outcome.state == "cancelled" and outcome.text):
                await self._store_answer(ctx, outcome, now)
            await self.publish(
                tx,
                facts,
                terminal_state=outcome.state,
                billing=billing,
                charge_micro=charge,
                outcome=outcome,
                quota_decision=ctx.quota_decision,
                downgrade_from=ctx.downgrade_from,
                downgrade_reason=ctx.downgrade_reason,
                attachments=ctx.attachments,
                trace_id=ctx.trace_id,
                now=now,
            )
            if outcome.state == "completed":
                await self._maybe_enqueue_summary(tx, ctx)
        return FinalizeResult(
            won=True,
            outcome=outcome,
            billing=billing,
            charge_micro=charge,
            quota_warnings=tuple(warnings),
            terminal=self._terminal_frame(ctx, outcome, warnings),
        )

    async def _settle(
        self, ctx: TurnContext, outcome: TurnOutcome, billing: Billing, now: dt.datetime
    ) -> tuple[int, list[QuotaWarning]]:
        """Settle the reserve (if any) and, for a completed turn, read back the warnings for `done`."""
        if ctx.reserve is None or ctx.reserve.reserve_tokens <= 0:
            return 0, []
        method = billing.settlement_method
        settlement = settle(
            method="estimated" if method == "none" else method,
            reserve=ctx.reserve,
            usage=outcome.usage if method == "actual" else None,
            model=ctx.model,
            periods=ctx.periods,
            overshoot_tolerance=self._config.quota.overshoot_tolerance_factor,
            web_search_calls=outcome.web_search_calls,
            code_interpreter_calls=outcome.code_interpreter_calls,
        )
        await quota_ledger.apply_deltas(
            self._db, ctx.facts.tenant_id, ctx.facts.user_id, settlement.bucket_deltas, now=now
        )
        warnings: list[QuotaWarning] = []
        if outcome.state == "completed" and ctx.limits is not None:
            rows = await quota_ledger.load_usage(
                self._db, ctx.facts.tenant_id, ctx.facts.user_id, ctx.periods
            )
            status = quota_status(ctx.limits, rows, now, self._config.quota.warning_threshold_pct)
            warnings = quota_warnings(status)
        return settlement.charge_micro, warnings

    async def _store_answer(self, ctx: TurnContext, outcome: TurnOutcome, now: dt.datetime) -> None:
        facts = ctx.facts
        usage = outcome.usage or Usage()
        try:
            await turns.insert_answer(
                self._db,
                turn_id=facts.turn_id,
                message_id=ctx.assistant_message_id,
                tenant_id=facts.tenant_id,
                chat_id=facts.chat_id,
                request_id=facts.request_id,
                content=outcome.text,
                model=facts.effective_model,
                provider_response_id=outcome.provider_response_id,
                input_tokens=max(0, usage.input_tokens),
                output_tokens=max(0, usage.output_tokens),
                cache_read_input_tokens=max(0, usage.cache_read_input_tokens),
                cache_write_input_tokens=max(0, usage.cache_write_input_tokens),
                reasoning_tokens=max(0, usage.reasoning_tokens),
                token_estimate=estimate_text_tokens(utf8_len(outcome.text), ctx.model.estimation_budgets),
                features_used=outcome.features_used,
                now=now,
            )
        except Exception as exc:
            if is_unavailable_error(exc) or turns.is_lock_conflict(exc):
                raise
            raise _MessagePersistenceFailed(str(exc)) from exc

    async def publish(
        self,
        tx: OutboxTransaction,
        facts: events.TurnFacts,
        *,
        terminal_state: FinalState,
        billing: Billing,
        charge_micro: int,
        outcome: TurnOutcome,
        quota_decision: str,
        downgrade_from: str | None,
        downgrade_reason: str | None,
        attachments: Sequence[AuditAttachment],
        trace_id: str | None,
        now: dt.datetime,
    ) -> None:
        """Enqueue the usage event and the turn audit event of a finalized turn (inside its transaction)."""
        usage = outcome.usage if usage_reported(outcome.usage) else None
        await tx.enqueue(
            constants.QUEUE_USAGE,
            facts.tenant_id,
            events.usage_event(
                facts,
                terminal_state=terminal_state,
                billing=billing,
                usage=usage,
                charge_micro=charge_micro,
                web_search_calls=outcome.web_search_calls,
                code_interpreter_calls=outcome.code_interpreter_calls,
                now=now,
            ),
        )
        audit = events.turn_audit_event(
            facts,
            completed=terminal_state == "completed",
            usage=usage,
            quota_decision=quota_decision,
            downgrade_from=downgrade_from,
            downgrade_reason=downgrade_reason,
            error_code=outcome.error_code,
            ttft_ms=outcome.ttft_ms,
            total_ms=outcome.total_ms,
            attachments=list(attachments),
            file_search_calls=outcome.file_search_calls,
            web_search_calls=outcome.web_search_calls,
            code_interpreter_calls=outcome.code_interpreter_calls,
            now=now,
            trace_id=trace_id,
        )
        await tx.enqueue(constants.QUEUE_AUDIT, facts.tenant_id, AuditEnvelope.wrap(audit))

    async def _maybe_enqueue_summary(self, tx: OutboxTransaction, ctx: TurnContext) -> None:
        """The thread-summary trigger (domain/summaries.py), when that queue is served by this process."""
        trigger = ctx.summary
        if trigger is None or constants.QUEUE_THREAD_SUMMARY not in self._outbox.queues:
            return
        await summary_task_if_due(
            tx,
            self._db,
            tenant_id=ctx.facts.tenant_id,
            chat_id=ctx.facts.chat_id,
            messages_truncated=trigger.messages_truncated,
            assembled_tokens=trigger.assembled_tokens,
            context_window=trigger.context_window,
            max_output_applied=trigger.max_output_applied,
            config=self._config.thread_summary,
        )

    @staticmethod
    def _terminal_frame(
        ctx: TurnContext, outcome: TurnOutcome, warnings: list[QuotaWarning]
    ) -> events.SseFrame | None:
        if outcome.state == "completed":
            usage = outcome.usage or Usage()
            return events.done(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                effective_model=ctx.facts.effective_model,
                selected_model=ctx.facts.selected_model,
                quota_decision=ctx.quota_decision,
                downgrade_from=ctx.downgrade_from,
                downgrade_reason=ctx.downgrade_reason,
                quota_warnings=warnings,
            )
        if outcome.state == "failed":
            code = outcome.error_code or "internal_error"
            return events.error(code, outcome.error_detail or _DEFAULT_ERROR_MESSAGES.get(code, code))
        # Cancelled: the client is gone (or the server is stopping); nobody is owed a terminal event.
        return None


def error_message(code: str) -> str:
    """The default human message of an in-stream error code."""
    return _DEFAULT_ERROR_MESSAGES.get(code, code)
