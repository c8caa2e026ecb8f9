"""Every row of the billing derivation table, the unknown-code branch and dedupe keys."""

from __future__ import annotations

import uuid

import pytest

from minichat_host.domain.billing import (
    SYSTEM_TASK_BILLING,
    Billing,
    dedupe_key,
    derive_billing,
    system_task_dedupe_key,
    usage_reported,
)
from minichat_host.plugins.types import Usage


@pytest.mark.parametrize("has_usage", [True, False])
def test_completed_is_always_actual(has_usage: bool) -> None:
    assert derive_billing("completed", None, has_usage) == Billing("completed", "actual", False)


def test_cancelled_is_aborted_actual_or_estimated() -> None:
    assert derive_billing("cancelled", None, True) == Billing("aborted", "actual", False)
    assert derive_billing("cancelled", None, False) == Billing("aborted", "estimated", False)


@pytest.mark.parametrize("has_usage", [True, False])
def test_orphan_timeout_is_aborted_estimated_ignoring_usage(has_usage: bool) -> None:
    assert derive_billing("failed", "orphan_timeout", has_usage) == Billing("aborted", "estimated", False)


@pytest.mark.parametrize(
    "code", ["context_length_exceeded", "validation_error", "context_budget_exceeded", "input_too_long"]
)
@pytest.mark.parametrize("has_usage", [True, False])
def test_nothing_generated_is_released(code: str, has_usage: bool) -> None:
    assert derive_billing("failed", code, has_usage) == Billing("failed", "released", False)


@pytest.mark.parametrize(
    "code",
    [
        "provider_error",
        "provider_timeout",
        "rate_limited",
        "web_search_calls_exceeded",
        "code_interpreter_calls_exceeded",
        "message_persistence_failed",
    ],
)
def test_provider_side_failures_bill_on_usage(code: str) -> None:
    assert derive_billing("failed", code, True) == Billing("failed", "actual", False)
    assert derive_billing("failed", code, False) == Billing("failed", "estimated", False)


@pytest.mark.parametrize("code", [None, "", "something_new", "ORPHAN_TIMEOUT", "stream_interrupted"])
@pytest.mark.parametrize("has_usage", [True, False])
def test_unknown_or_missing_codes_are_estimated_and_flagged(code: str | None, has_usage: bool) -> None:
    assert derive_billing("failed", code, has_usage) == Billing("failed", "estimated", True)


def test_non_terminal_state_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        derive_billing("running", None, False)


def test_billing_unpacks_as_a_tuple() -> None:
    outcome, method, unknown = derive_billing("cancelled", None, False)
    assert (outcome, method, unknown) == ("aborted", "estimated", False)
    assert SYSTEM_TASK_BILLING == ("system_task", "none", False)


def test_usage_reported() -> None:
    assert not usage_reported(None)
    assert not usage_reported(Usage())
    assert not usage_reported(Usage(cache_read_input_tokens=5, reasoning_tokens=3))
    assert usage_reported(Usage(input_tokens=1))
    assert usage_reported(Usage(output_tokens=1))


TENANT = uuid.UUID("00000000-df51-5b42-9538-d2b56b7ee953")
TURN = uuid.UUID("0190f5a0-0000-7000-8000-000000000001")
REQUEST = uuid.UUID("11111111-6a88-4768-9dfc-6bcd5187d9ed")


def test_dedupe_key_is_three_32_hex_ids() -> None:
    key = dedupe_key(TENANT, TURN, REQUEST)
    assert key == "/".join(
        [
            "00000000df515b429538d2b56b7ee953",
            "0190f5a0000070008000000000000001",
            "111111116a8847689dfc6bcd5187d9ed",
        ]
    )
    assert dedupe_key(str(TENANT), str(TURN), str(REQUEST).upper()) == key
    assert all(len(part) == 32 for part in key.split("/"))


def test_system_task_dedupe_key() -> None:
    assert system_task_dedupe_key(TENANT, REQUEST) == (
        "00000000df515b429538d2b56b7ee953/thread_summary_update/111111116a8847689dfc6bcd5187d9ed"
    )
    assert system_task_dedupe_key(str(TENANT), str(REQUEST), "other_task").split("/")[1] == "other_task"


def test_bad_uuid_is_refused() -> None:
    with pytest.raises(ValueError):
        dedupe_key("not-a-uuid", TURN, REQUEST)
