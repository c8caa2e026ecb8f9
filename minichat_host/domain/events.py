"""What a turn says to the outside: the SSE events of a stream and the outbox events of a finalized turn.

SSE payloads follow the original's openapi.json `Sse*` schemas (member names, which members are always
sent and which are omitted when null). `SseFrame` pairs an event name with its payload; the HTTP layer
encodes `event: <name>` / `data: <compact JSON>`. The builders below make the usage event (with a
dedupe key for every turn) and the audit events (turn / mutation / delete) the outbox carries.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from minichat_host.domain.billing import Billing, dedupe_key
from minichat_host.domain.quota import QuotaWarning
from minichat_host.domain.texts import rfc3339, uuid_text
from minichat_host.plugins.types import (
    AuditAttachment,
    AuditUsage,
    LatencyMs,
    PolicyDecisions,
    QuotaPolicyDecision,
    ToolCalls,
    TurnAuditEvent,
    TurnDeleteAuditEvent,
    TurnMutationAuditEvent,
    Usage,
    UsageEvent,
)
from minichat_host.providers.base import Citation

SseEventName = Literal["stream_started", "ping", "delta", "tool", "citations", "done", "error"]
TERMINAL_EVENTS: Final = frozenset({"done", "error"})

# HTTP status each in-stream error code stands for (the SSE error payload is a problem envelope).
_ERROR_STATUS: Final[dict[str, int]] = {
    "provider_error": 502,
    "provider_unavailable": 502,
    "provider_timeout": 504,
    "rate_limited": 429,
    "web_search_calls_exceeded": 400,
    "code_interpreter_calls_exceeded": 400,
    "context_length_exceeded": 422,
    "stream_interrupted": 500,
    "internal_error": 500,
}


class _Payload(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class ThreadSummaryInfo(_Payload):
    token_estimate: int


class SseStreamStarted(_Payload):
    """First event of every stream: the turn's request_id and the id the assistant message is stored under."""

    request_id: uuid.UUID
    message_id: uuid.UUID
    is_new_turn: bool
    thread_summary_applied: ThreadSummaryInfo | None = None


class SsePing(_Payload):
    """Keep-alive before the first delta/tool; clients ignore it."""


class SseDelta(_Payload):
    # No default: omit_defaults would drop a defaulted `type`, and the schema requires it.
    type: Literal["text"]
    content: str


class SseTool(_Payload):
    phase: Literal["start", "progress", "done"]
    name: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class SseCitations(_Payload):
    items: list[Citation]


class SseUsage(_Payload):
    input_tokens: int
    output_tokens: int
    model: str


class SseDone(_Payload):
    """Terminal success. `quota_warnings` is present (maybe empty) on live completions, absent on replays."""

    usage: SseUsage
    effective_model: str
    selected_model: str
    quota_decision: Literal["allow", "downgrade"]
    downgrade_from: str | None = None
    downgrade_reason: str | None = None
    quota_warnings: list[QuotaWarning] | None = None


class SseError(msgspec.Struct, kw_only=True):
    """Terminal failure: `{code, message}` as the original's relay sends it, inside the problem envelope the
    published schema describes (type, title, status, detail, instance, code)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str = ""
    code: str
    message: str


SsePayload = SseStreamStarted | SsePing | SseDelta | SseTool | SseCitations | SseDone | SseError


@dataclass(frozen=True, slots=True)
class SseFrame:
    """One SSE event: its name and payload."""

    event: SseEventName
    data: SsePayload

    @property
    def is_terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


def stream_started(
    request_id: uuid.UUID, message_id: uuid.UUID, *, is_new_turn: bool, summary_tokens: int | None = None
) -> SseFrame:
    summary = ThreadSummaryInfo(token_estimate=summary_tokens) if summary_tokens is not None else None
    return SseFrame(
        "stream_started",
        SseStreamStarted(
            request_id=request_id,
            message_id=message_id,
            is_new_turn=is_new_turn,
            thread_summary_applied=summary,
        ),
    )


PING: Final = SseFrame("ping", SsePing())


def delta(text: str) -> SseFrame:
    return SseFrame("delta", SseDelta(type="text", content=text))


def tool(phase: Literal["start", "progress", "done"], name: str, details: dict[str, Any]) -> SseFrame:
    return SseFrame("tool", SseTool(phase=phase, name=name, details=details))


def citations(items: list[Citation]) -> SseFrame:
    return SseFrame("citations", SseCitations(items=items))


def done(
    *,
    input_tokens: int,
    output_tokens: int,
    effective_model: str,
    selected_model: str,
    quota_decision: Literal["allow", "downgrade"],
    downgrade_from: str | None,
    downgrade_reason: str | None,
    quota_warnings: list[QuotaWarning] | None,
) -> SseFrame:
    downgraded = quota_decision == "downgrade"
    return SseFrame(
        "done",
        SseDone(
            usage=SseUsage(input_tokens=input_tokens, output_tokens=output_tokens, model=effective_model),
            effective_model=effective_model,
            selected_model=selected_model,
            quota_decision=quota_decision,
            downgrade_from=downgrade_from if downgraded else None,
            downgrade_reason=downgrade_reason if downgraded else None,
            quota_warnings=quota_warnings,
        ),
    )


def error(code: str, message: str) -> SseFrame:
    return SseFrame(
        "error",
        SseError(title=code, status=_ERROR_STATUS.get(code, 500), detail=message, code=code, message=message),
    )


# --- outbox events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TurnFacts:
    """Who and what a turn is, as the usage and audit events name it."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    chat_id: uuid.UUID
    turn_id: uuid.UUID
    request_id: uuid.UUID
    selected_model: str
    effective_model: str
    policy_version_applied: int


def usage_event(
    facts: TurnFacts,
    *,
    terminal_state: str,
    billing: Billing,
    usage: Usage | None,
    charge_micro: int,
    web_search_calls: int,
    code_interpreter_calls: int,
    now: dt.datetime,
) -> UsageEvent:
    """The usage event of a finalized user turn; `usage` only when billed on actual usage."""
    return UsageEvent(
        tenant_id=uuid_text(facts.tenant_id),
        user_id=uuid_text(facts.user_id),
        chat_id=uuid_text(facts.chat_id),
        turn_id=uuid_text(facts.turn_id),
        request_id=uuid_text(facts.request_id),
        effective_model=facts.effective_model,
        selected_model=facts.selected_model,
        terminal_state=terminal_state,
        billing_outcome=billing.billing_outcome,
        usage=usage,
        actual_credits_micro=charge_micro,
        settlement_method=billing.settlement_method,
        policy_version_applied=facts.policy_version_applied,
        web_search_calls=web_search_calls,
        code_interpreter_calls=code_interpreter_calls,
        timestamp=rfc3339(now),
        requester_type="user",
        dedupe_key=dedupe_key(facts.tenant_id, facts.turn_id, facts.request_id),
    )


def turn_audit_event(
    facts: TurnFacts,
    *,
    completed: bool,
    usage: Usage | None,
    quota_decision: str,
    downgrade_from: str | None,
    downgrade_reason: str | None,
    error_code: str | None,
    ttft_ms: int | None,
    total_ms: int | None,
    attachments: list[AuditAttachment],
    file_search_calls: int,
    web_search_calls: int,
    code_interpreter_calls: int,
    now: dt.datetime,
    trace_id: str | None = None,
) -> TurnAuditEvent:
    """`turn_completed` / `turn_failed` (cancelled turns are reported as failed, as the original does)."""
    tools_used = file_search_calls or web_search_calls or code_interpreter_calls
    return TurnAuditEvent(
        event_type="turn_completed" if completed else "turn_failed",
        timestamp=rfc3339(now),
        tenant_id=uuid_text(facts.tenant_id),
        user_id=uuid_text(facts.user_id),
        chat_id=uuid_text(facts.chat_id),
        turn_id=uuid_text(facts.turn_id),
        request_id=uuid_text(facts.request_id),
        selected_model=facts.selected_model,
        effective_model=facts.effective_model,
        policy_version_applied=facts.policy_version_applied,
        usage=AuditUsage(
            input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0,
            model=facts.effective_model,
            cache_read_input_tokens=usage.cache_read_input_tokens if usage else None,
            cache_write_input_tokens=usage.cache_write_input_tokens if usage else None,
            reasoning_tokens=usage.reasoning_tokens if usage else None,
        ),
        latency_ms=LatencyMs(ttft_ms=ttft_ms, total_ms=total_ms),
        policy_decisions=PolicyDecisions(
            quota=QuotaPolicyDecision(
                decision=quota_decision, downgrade_from=downgrade_from, downgrade_reason=downgrade_reason
            )
        ),
        error_code=error_code,
        attachments=attachments,
        tool_calls=ToolCalls(
            file_search_calls=file_search_calls,
            web_search_calls=web_search_calls,
            code_interpreter_calls=code_interpreter_calls,
        )
        if tools_used
        else None,
        trace_id=trace_id,
    )


def mutation_audit_event(
    kind: Literal["turn_retry", "turn_edit"],
    *,
    tenant_id: uuid.UUID,
    actor_user_id: uuid.UUID,
    chat_id: uuid.UUID,
    old_turn_id: uuid.UUID,
    original_request_id: uuid.UUID,
    new_request_id: uuid.UUID,
    now: dt.datetime,
    trace_id: str | None = None,
) -> TurnMutationAuditEvent:
    return TurnMutationAuditEvent(
        event_type=kind,
        timestamp=rfc3339(now),
        tenant_id=uuid_text(tenant_id),
        actor_user_id=uuid_text(actor_user_id),
        chat_id=uuid_text(chat_id),
        turn_id=uuid_text(old_turn_id),
        original_request_id=uuid_text(original_request_id),
        new_request_id=uuid_text(new_request_id),
        trace_id=trace_id,
    )


def delete_audit_event(
    *,
    tenant_id: uuid.UUID,
    actor_user_id: uuid.UUID,
    chat_id: uuid.UUID,
    turn_id: uuid.UUID,
    request_id: uuid.UUID,
    now: dt.datetime,
    trace_id: str | None = None,
) -> TurnDeleteAuditEvent:
    return TurnDeleteAuditEvent(
        event_type="turn_delete",
        timestamp=rfc3339(now),
        tenant_id=uuid_text(tenant_id),
        actor_user_id=uuid_text(actor_user_id),
        chat_id=uuid_text(chat_id),
        turn_id=uuid_text(turn_id),
        request_id=uuid_text(request_id),
        trace_id=trace_id,
    )
