"""Billing derivation and usage-event dedupe keys (original-domain.md §3 "Billing derivation", §6, §8.2).

| state + error_code                                                 | outcome   | method                  |
|--------------------------------------------------------------------|-----------|-------------------------|
| completed                                                          | completed | actual                  |
| cancelled                                                          | aborted   | actual / estimated (*)  |
| failed + orphan_timeout                                            | aborted   | estimated               |
| failed + context_length_exceeded / validation_error                | failed    | released                |
| failed + context_budget_exceeded / input_too_long                  | failed    | released                |
| failed + provider_error / provider_timeout / rate_limited          | failed    | actual / estimated (*)  |
| failed + web_search_calls_exceeded / code_interpreter_calls_exceeded| failed    | actual / estimated (*)  |
| failed + message_persistence_failed                                | failed    | actual / estimated (*)  |
| failed + any other code or none                                    | failed    | estimated + unknown     |

(*) actual when the provider reported usage (input or output tokens > 0), else estimated. orphan_timeout
ignores any usage.

Rows the original leaves to its unknown-code branch (gap §8.7), decided here:
- `context_budget_exceeded`, `input_too_long`: the provider was never called, nothing was generated, so the
  reserve is released (like `context_length_exceeded`).
- `code_interpreter_calls_exceeded`: the same situation as `web_search_calls_exceeded` (a tool limit
  stopped a running generation), so it bills the same way.
- `message_persistence_failed`: the provider finished and its text was streamed to the client; only
  storing the message failed, so the turn is billed on what the provider reports, like a provider error.
The unknown flag asks the caller to log critically and count a metric after commit.
"""

from __future__ import annotations

import uuid
from typing import Final, Literal, NamedTuple

from minichat_host.plugins.types import Usage

BillingOutcome = Literal["completed", "aborted", "failed", "system_task"]
BillingSettlementMethod = Literal["actual", "estimated", "released", "none"]

RELEASED_ERROR_CODES: Final = frozenset(
    {"context_length_exceeded", "validation_error", "context_budget_exceeded", "input_too_long"}
)
USAGE_BILLED_ERROR_CODES: Final = frozenset(
    {
        "provider_error",
        "provider_timeout",
        "rate_limited",
        "web_search_calls_exceeded",
        "code_interpreter_calls_exceeded",
        "message_persistence_failed",
    }
)
ORPHAN_TIMEOUT: Final = "orphan_timeout"
THREAD_SUMMARY_TASK_TYPE: Final = "thread_summary_update"


class Billing(NamedTuple):
    billing_outcome: BillingOutcome
    settlement_method: BillingSettlementMethod
    unknown_code: bool


SYSTEM_TASK_BILLING: Final = Billing("system_task", "none", False)


def usage_reported(usage: Usage | None) -> bool:
    """Usage counts for billing only when the provider reported some input or output tokens."""
    return usage is not None and (usage.input_tokens > 0 or usage.output_tokens > 0)


def derive_billing(state: str, error_code: str | None, has_usage: bool) -> Billing:
    """The billing outcome and settlement method of a finalized user turn (table in the module doc)."""
    by_usage: BillingSettlementMethod = "actual" if has_usage else "estimated"
    if state == "completed":
        return Billing("completed", "actual", False)
    if state == "cancelled":
        return Billing("aborted", by_usage, False)
    if state != "failed":
        raise ValueError(f"turn state {state!r} is not terminal")
    if error_code == ORPHAN_TIMEOUT:
        return Billing("aborted", "estimated", False)
    if error_code in RELEASED_ERROR_CODES:
        return Billing("failed", "released", False)
    if error_code in USAGE_BILLED_ERROR_CODES:
        return Billing("failed", by_usage, False)
    return Billing("failed", "estimated", True)


def _hex(value: uuid.UUID | str) -> str:
    return value.hex if isinstance(value, uuid.UUID) else uuid.UUID(value).hex


def dedupe_key(tenant_id: uuid.UUID | str, turn_id: uuid.UUID | str, request_id: uuid.UUID | str) -> str:
    """`{tenant_hex}/{turn_hex}/{request_hex}` (32-hex UUIDs): one key per user turn's usage event."""
    return f"{_hex(tenant_id)}/{_hex(turn_id)}/{_hex(request_id)}"


def system_task_dedupe_key(
    tenant_id: uuid.UUID | str,
    system_request_id: uuid.UUID | str,
    task_type: str = THREAD_SUMMARY_TASK_TYPE,
) -> str:
    """`{tenant_hex}/{task_type}/{system_request_id_hex}`: the key of a system task's usage event."""
    return f"{_hex(tenant_id)}/{task_type}/{_hex(system_request_id)}"
