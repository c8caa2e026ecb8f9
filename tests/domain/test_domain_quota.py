"""Reserve estimate, periods and the downgrade cascade (original-domain.md §3 "Preflight")."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import partial

import pytest

from minichat_host.config import EstimationBudgetsConfig, QuotaConfig
from minichat_host.domain.errors import InputTooLong
from minichat_host.domain.models import BUCKET_PREMIUM, BUCKET_TOTAL, BucketDelta, Period, UsageKey, UsageRow
from minichat_host.domain.quota import (
    Allow,
    Downgrade,
    QuotaDecision,
    Reject,
    ReserveEstimate,
    decide_quota,
    ensure_input_fits,
    estimate_input_tokens,
    estimate_reserve,
    model_for_tier,
    next_reset,
    periods_for,
    reserve_for_model,
    reserve_writes,
    rfc3339,
)
from minichat_host.plugins.types import (
    EstimationBudgets,
    GeneralConfig,
    KillSwitches,
    ModelCatalogEntry,
    ModelPreference,
    PolicySnapshot,
    TierLimits,
    ToolSupport,
    UserLimits,
)

DAY = dt.date(2026, 11, 23)
MONTH = dt.date(2026, 11, 1)
PERIODS = [Period("daily", DAY), Period("monthly", MONTH)]
EST_IN = 1210
# credits(1210, 4096, 3e6, 15e6) and credits(1210, 4096, 1e6, 3e6)
P_RESERVE = 3630 + 61440
S_RESERVE = 1210 + 12288


def model(
    model_id: str,
    tier: str,
    *,
    enabled: bool = True,
    default: bool = False,
    web_search: bool = False,
    code_interpreter: bool = False,
) -> ModelCatalogEntry:
    premium = tier == "premium"
    return ModelCatalogEntry(
        id=model_id,
        provider_model_id=f"provider-{model_id}",
        display_name=model_id,
        tier="premium" if premium else "standard",
        enabled=enabled,
        max_output_tokens=4096,
        input_tokens_credit_multiplier_micro=3_000_000 if premium else 1_000_000,
        output_tokens_credit_multiplier_micro=15_000_000 if premium else 3_000_000,
        preference=ModelPreference(is_default=True) if default else None,
        general_config=GeneralConfig(
            tool_support=ToolSupport(web_search=web_search, code_interpreter=code_interpreter)
        ),
    )


def catalog(*entries: ModelCatalogEntry, switches: KillSwitches | None = None) -> PolicySnapshot:
    return PolicySnapshot(
        user_id="u",
        policy_version=1,
        model_catalog=list(entries)
        or [
            model("P", "premium", default=True),
            model("P2", "premium"),
            model("S", "standard", default=True),
            model("S2", "standard"),
        ],
        kill_switches=switches or KillSwitches(),
    )


LIMITS = UserLimits(
    user_id="u",
    policy_version=1,
    standard=TierLimits(limit_daily_credits_micro=100_000_000, limit_monthly_credits_micro=1_000_000_000),
    premium=TierLimits(limit_daily_credits_micro=50_000_000, limit_monthly_credits_micro=500_000_000),
)

RESERVE_FOR = partial(
    reserve_for_model, EST_IN, streaming_max_output_tokens=32768, minimal_generation_floor=50
)


def decide(
    selected: str,
    snapshot: PolicySnapshot | None = None,
    usage: Mapping[UsageKey, UsageRow] | None = None,
    *,
    limits: UserLimits = LIMITS,
    web: bool = False,
    ci: bool = False,
    quota: QuotaConfig | None = None,
) -> QuotaDecision:
    return decide_quota(
        selected_model_id=selected,
        snapshot=snapshot or catalog(),
        limits=limits,
        usage=usage or {},
        periods=PERIODS,
        reserve_for=RESERVE_FOR,
        wants_web_search=web,
        wants_code_interpreter=ci,
        quota=quota or QuotaConfig(),
    )


# --- reserve estimate ----------------------------------------------------------------------------
def test_reserve_estimate_with_defaults() -> None:
    est = estimate_reserve(
        message_bytes=4000,
        image_count=0,
        has_ready_documents=False,
        web_search=False,
        code_interpreter=False,
        prior_context_tokens=0,
        budgets=EstimationBudgetsConfig(),
        model=model("S", "standard"),
        streaming_max_output_tokens=32768,
    )
    assert est == ReserveEstimate(
        est_input_tokens=1210,
        max_output_tokens_applied=4096,
        reserve_tokens=1210 + 4096,
        reserved_credits_micro=S_RESERVE,
        minimal_generation_floor_applied=50,
    )


def test_every_input_term_adds_up() -> None:
    budgets = EstimationBudgetsConfig()
    est_in = estimate_input_tokens(
        message_bytes=4000,
        image_count=2,
        has_ready_documents=True,
        web_search=True,
        code_interpreter=True,
        prior_context_tokens=777,
        budgets=budgets,
    )
    assert est_in == 1210 + 2 * 1000 + 500 + 500 + 1000 + 777


def test_surcharges_come_from_the_given_budgets() -> None:
    budgets = EstimationBudgets(
        tool_surcharge_tokens=1, web_search_surcharge_tokens=20, code_interpreter_surcharge_tokens=300
    )
    base = estimate_input_tokens(
        message_bytes=0,
        image_count=0,
        has_ready_documents=False,
        web_search=False,
        code_interpreter=False,
        prior_context_tokens=0,
        budgets=budgets,
    )
    full = estimate_input_tokens(
        message_bytes=0,
        image_count=0,
        has_ready_documents=True,
        web_search=True,
        code_interpreter=True,
        prior_context_tokens=0,
        budgets=budgets,
    )
    assert base == 110
    assert full - base == 321


def test_negative_counts_rejected() -> None:
    with pytest.raises(ValueError):
        estimate_input_tokens(
            message_bytes=0,
            image_count=-1,
            has_ready_documents=False,
            web_search=False,
            code_interpreter=False,
            prior_context_tokens=0,
            budgets=EstimationBudgetsConfig(),
        )


def test_max_output_is_the_smaller_cap() -> None:
    entry = model("S", "standard")
    assert reserve_for_model(10, entry, streaming_max_output_tokens=1000, minimal_generation_floor=5) == (
        ReserveEstimate(10, 1000, 1010, 10 + 3000, 5)
    )
    assert (
        reserve_for_model(
            10, entry, streaming_max_output_tokens=99_999, minimal_generation_floor=5
        ).max_output_tokens_applied
        == 4096
    )


def test_input_too_long_uses_the_model_budgets() -> None:
    entry = ModelCatalogEntry(
        id="m",
        provider_model_id="m",
        display_name="m",
        max_input_tokens=1210,
        estimation_budgets=EstimationBudgets(),
    )
    assert ensure_input_fits(4000, entry) == 1210
    with pytest.raises(InputTooLong) as info:
        ensure_input_fits(4001, entry)
    assert info.value.status == 422
    assert info.value.code == "input_too_long"


# --- periods -----------------------------------------------------------------------------------------
def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def test_periods_are_the_utc_day_and_month() -> None:
    assert list(periods_for(utc(2026, 11, 23, 15, 4, 5))) == PERIODS


def test_periods_use_utc_not_the_local_date() -> None:
    minus_two = dt.timezone(dt.timedelta(hours=-2))
    now = dt.datetime(2026, 3, 31, 23, 30, tzinfo=minus_two)  # 2026-04-01 01:30 UTC
    assert periods_for(now) == (Period("daily", dt.date(2026, 4, 1)), Period("monthly", dt.date(2026, 4, 1)))
    # Cached per UTC day: the next day's are its own.
    assert periods_for(now + dt.timedelta(days=1))[0] == Period("daily", dt.date(2026, 4, 2))


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError):
        periods_for(dt.datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("now", "daily", "monthly"),
    [
        (utc(2026, 11, 23, 15), utc(2026, 11, 24), utc(2026, 12, 1)),
        (utc(2026, 11, 30, 23, 59, 59), utc(2026, 12, 1), utc(2026, 12, 1)),
        (utc(2026, 12, 31, 23, 59, 59), utc(2027, 1, 1), utc(2027, 1, 1)),
        (utc(2027, 1, 31), utc(2027, 2, 1), utc(2027, 2, 1)),
        (utc(2028, 2, 28, 12), utc(2028, 2, 29), utc(2028, 3, 1)),
        (utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 2, 1)),
    ],
)
def test_next_reset(now: dt.datetime, daily: dt.datetime, monthly: dt.datetime) -> None:
    assert next_reset("daily", now) == daily
    assert next_reset("monthly", now) == monthly


def test_rfc3339() -> None:
    assert rfc3339(utc(2027, 1, 1)) == "2027-01-01T00:00:00Z"


# --- cascade -----------------------------------------------------------------------------------------
def test_premium_allowed() -> None:
    decision = decide("P")
    assert isinstance(decision, Allow)
    assert decision.effective.id == "P"
    assert decision.tier == "premium"
    assert decision.quota_decision == "allow"
    assert decision.buckets == (BUCKET_TOTAL, BUCKET_PREMIUM)
    assert decision.reserve.reserved_credits_micro == P_RESERVE


def test_non_default_selected_premium_model_is_kept() -> None:
    decision = decide("P2")
    assert isinstance(decision, Allow)
    assert decision.effective.id == "P2"


def test_standard_allowed_reserves_total_only() -> None:
    decision = decide("S2")
    assert isinstance(decision, Allow)
    assert decision.effective.id == "S2"
    assert decision.buckets == (BUCKET_TOTAL,)
    assert decision.reserve.reserved_credits_micro == S_RESERVE


def test_limit_is_inclusive() -> None:
    usage = {("daily", DAY, BUCKET_PREMIUM): UsageRow(spent_credits_micro=50_000_000 - P_RESERVE)}
    assert isinstance(decide("P", usage=usage), Allow)


def test_premium_exhausted_in_daily_only_downgrades() -> None:
    usage = {("daily", DAY, BUCKET_PREMIUM): UsageRow(spent_credits_micro=50_000_000 - P_RESERVE + 1)}
    decision = decide("P", usage=usage)
    assert isinstance(decision, Downgrade)
    assert (decision.effective.id, decision.reason, decision.downgrade_from) == (
        "S",
        "premium_quota_exhausted",
        "P",
    )
    assert decision.quota_decision == "downgrade"
    assert decision.tier == "standard"
    assert decision.reserve.reserved_credits_micro == S_RESERVE


def test_premium_exhausted_in_monthly_only_downgrades() -> None:
    usage = {("monthly", MONTH, BUCKET_PREMIUM): UsageRow(reserved_credits_micro=500_000_000)}
    decision = decide("P", usage=usage)
    assert isinstance(decision, Downgrade)
    assert (decision.effective.id, decision.reason) == ("S", "premium_quota_exhausted")


def test_rows_of_other_periods_do_not_count() -> None:
    usage = {
        ("daily", DAY - dt.timedelta(days=1), BUCKET_PREMIUM): UsageRow(spent_credits_micro=10**12),
        ("monthly", dt.date(2026, 10, 1), BUCKET_TOTAL): UsageRow(spent_credits_micro=10**12),
    }
    assert isinstance(decide("P", usage=usage), Allow)


def test_premium_needs_room_in_total_too_and_standard_is_priced_at_its_own_reserve() -> None:
    # Total has room for the standard reserve but not for the premium one.
    usage = {("daily", DAY, BUCKET_TOTAL): UsageRow(spent_credits_micro=100_000_000 - S_RESERVE)}
    decision = decide("P", usage=usage)
    assert isinstance(decision, Downgrade)
    assert (decision.effective.id, decision.reason) == ("S", "premium_quota_exhausted")


def test_zero_premium_limit_means_no_premium() -> None:
    limits = UserLimits(
        user_id="u",
        policy_version=1,
        standard=LIMITS.standard,
        premium=TierLimits(limit_daily_credits_micro=0, limit_monthly_credits_micro=500_000_000),
    )
    decision = decide("P", limits=limits)
    assert isinstance(decision, Downgrade)
    assert decision.reason == "premium_quota_exhausted"


@pytest.mark.parametrize(
    ("switches", "reason"),
    [
        (KillSwitches(force_standard_tier=True), "force_standard_tier"),
        (KillSwitches(disable_premium_tier=True), "disable_premium_tier"),
        (KillSwitches(force_standard_tier=True, disable_premium_tier=True), "force_standard_tier"),
    ],
)
def test_kill_switches_skip_premium(switches: KillSwitches, reason: str) -> None:
    decision = decide("P", catalog(switches=switches))
    assert isinstance(decision, Downgrade)
    assert (decision.effective.id, decision.reason, decision.tier) == ("S", reason, "standard")


def test_kill_switches_leave_standard_alone() -> None:
    switches = KillSwitches(force_standard_tier=True, disable_premium_tier=True)
    assert isinstance(decide("S", catalog(switches=switches)), Allow)


def test_disabled_premium_model_falls_back_within_its_tier() -> None:
    snapshot = catalog(
        model("P", "premium", enabled=False, default=True),
        model("P2", "premium"),
        model("S", "standard", default=True),
    )
    decision = decide("P", snapshot)
    assert isinstance(decision, Downgrade)
    assert (decision.effective.id, decision.reason, decision.tier) == ("P2", "model_disabled", "premium")


def test_disabled_standard_model_uses_the_standard_default() -> None:
    snapshot = catalog(
        model("P", "premium", default=True),
        model("S2", "standard", enabled=False),
        model("S3", "standard"),
        model("S", "standard", default=True),
    )
    decision = decide("S2", snapshot)
    assert isinstance(decision, Downgrade)
    assert (decision.effective.id, decision.reason) == ("S", "model_disabled")


def test_first_recorded_reason_wins() -> None:
    snapshot = catalog(
        model("P", "premium", enabled=False),
        model("P2", "premium"),
        model("S", "standard"),
        switches=KillSwitches(force_standard_tier=True),
    )
    decision = decide("P", snapshot)
    assert isinstance(decision, Downgrade)
    assert (decision.effective.id, decision.reason) == ("S", "model_disabled")


def test_unknown_selected_model_starts_at_premium_with_model_disabled() -> None:
    decision = decide("gone")
    assert isinstance(decision, Downgrade)
    assert (decision.effective.id, decision.tier, decision.reason, decision.downgrade_from) == (
        "P",
        "premium",
        "model_disabled",
        "gone",
    )


def test_unknown_selected_model_reaches_standard_when_premium_is_exhausted() -> None:
    usage = {("daily", DAY, BUCKET_PREMIUM): UsageRow(spent_credits_micro=50_000_000)}
    decision = decide("gone", usage=usage)
    assert isinstance(decision, Downgrade)
    assert (decision.effective.id, decision.reason) == ("S", "model_disabled")


def test_standard_never_escalates() -> None:
    # No enabled standard model is left: premium has room, yet a standard selection is rejected.
    snapshot = catalog(model("P", "premium", default=True), model("S", "standard", enabled=False))
    assert decide("S", snapshot) == Reject("tokens")
    usage = {("monthly", MONTH, BUCKET_TOTAL): UsageRow(spent_credits_micro=1_000_000_000)}
    assert decide("S", usage=usage) == Reject("tokens")


def test_premium_tier_without_enabled_models_is_skipped() -> None:
    snapshot = catalog(model("P", "premium", enabled=False), model("S", "standard"))
    decision = decide("P", snapshot)
    assert isinstance(decision, Downgrade)
    assert (decision.effective.id, decision.reason) == ("S", "model_disabled")


def test_all_exhausted_rejects_tokens() -> None:
    usage = {("daily", DAY, BUCKET_TOTAL): UsageRow(spent_credits_micro=99_999_999, reserved_credits_micro=1)}
    assert decide("P", usage=usage) == Reject("tokens")


def id_of(entry: ModelCatalogEntry | None) -> str | None:
    return entry.id if entry is not None else None


def test_model_for_tier_preference_order() -> None:
    snapshot = catalog(
        model("S1", "standard"),
        model("S2", "standard", default=True),
        model("S3", "standard", enabled=False, default=True),
    )
    assert id_of(model_for_tier(snapshot, "standard", "S1")) == "S1"
    assert id_of(model_for_tier(snapshot, "standard", "S3")) == "S2"
    no_default = catalog(
        model("S1", "standard", enabled=False), model("S4", "standard"), model("S5", "standard")
    )
    assert id_of(model_for_tier(no_default, "standard", "x")) == "S4"
    assert model_for_tier(no_default, "premium", "x") is None


# --- daily tool quotas -------------------------------------------------------------------------------
TOOLS_CATALOG = catalog(
    model("P", "premium", default=True, web_search=True, code_interpreter=True),
    model("S", "standard", default=True),
)


def tool_usage(web: int = 0, ci: int = 0) -> dict[UsageKey, UsageRow]:
    return {("daily", DAY, BUCKET_TOTAL): UsageRow(web_search_calls=web, code_interpreter_calls=ci)}


def test_web_search_daily_quota() -> None:
    assert isinstance(decide("P", TOOLS_CATALOG, tool_usage(web=74), web=True), Allow)
    assert decide("P", TOOLS_CATALOG, tool_usage(web=75), web=True) == Reject("web_search")
    # Not requested, or not supported by the effective model: no tool quota applies.
    assert isinstance(decide("P", TOOLS_CATALOG, tool_usage(web=75), web=False), Allow)
    assert isinstance(decide("S", TOOLS_CATALOG, tool_usage(web=75), web=True), Allow)


def test_code_interpreter_daily_quota() -> None:
    assert isinstance(decide("P", TOOLS_CATALOG, tool_usage(ci=49), ci=True), Allow)
    assert decide("P", TOOLS_CATALOG, tool_usage(ci=50), ci=True) == Reject("code_interpreter")
    assert isinstance(decide("P", TOOLS_CATALOG, tool_usage(ci=50), ci=False), Allow)
    assert isinstance(decide("S", TOOLS_CATALOG, tool_usage(ci=50), ci=True), Allow)


def test_tool_quotas_follow_config_and_read_the_daily_total_row_only() -> None:
    quota = QuotaConfig(web_search_daily_quota=3)
    usage = tool_usage(web=3)
    assert decide("P", TOOLS_CATALOG, usage, web=True, quota=quota) == Reject("web_search")
    other_rows = {
        ("monthly", MONTH, BUCKET_TOTAL): UsageRow(web_search_calls=999),
        ("daily", DAY, BUCKET_PREMIUM): UsageRow(web_search_calls=999),
    }
    assert isinstance(decide("P", TOOLS_CATALOG, other_rows, web=True, quota=quota), Allow)


def test_tool_quota_checks_the_effective_model_after_a_downgrade() -> None:
    snapshot = catalog(
        model("P", "premium", default=True),
        model("S", "standard", default=True, web_search=True),
        switches=KillSwitches(disable_premium_tier=True),
    )
    assert decide("P", snapshot, tool_usage(web=75), web=True) == Reject("web_search")


# --- reserve writes ----------------------------------------------------------------------------------
def test_reserve_writes_cover_every_bucket_and_period() -> None:
    decision = decide("P")
    assert isinstance(decision, Allow)
    assert reserve_writes(decision, PERIODS) == [
        BucketDelta("daily", DAY, BUCKET_TOTAL, reserved_delta=P_RESERVE),
        BucketDelta("monthly", MONTH, BUCKET_TOTAL, reserved_delta=P_RESERVE),
        BucketDelta("daily", DAY, BUCKET_PREMIUM, reserved_delta=P_RESERVE),
        BucketDelta("monthly", MONTH, BUCKET_PREMIUM, reserved_delta=P_RESERVE),
    ]


def test_reserve_writes_standard() -> None:
    decision = decide("S")
    assert isinstance(decision, Allow)
    writes = reserve_writes(decision, PERIODS)
    assert [w.key for w in writes] == [("daily", DAY, BUCKET_TOTAL), ("monthly", MONTH, BUCKET_TOTAL)]
    assert {w.reserved_delta for w in writes} == {S_RESERVE}
