"""GET /quota/status math and done.quota_warnings (original-api.md §7, original-domain.md §3)."""

from __future__ import annotations

import datetime as dt
import json

import msgspec

from minichat_host.domain.models import BUCKET_PREMIUM, BUCKET_TOTAL, UsageKey, UsageRow
from minichat_host.domain.quota import (
    QuotaPeriodStatus,
    QuotaStatusResponse,
    QuotaWarning,
    quota_status,
    quota_warnings,
)
from minichat_host.plugins.types import TierLimits, UserLimits

NOW = dt.datetime(2026, 11, 23, 15, 30, tzinfo=dt.UTC)
DAY = dt.date(2026, 11, 23)
MONTH = dt.date(2026, 11, 1)


def limits(
    std_daily: int = 100_000_000,
    std_monthly: int = 1_000_000_000,
    prem_daily: int = 50_000_000,
    prem_monthly: int = 500_000_000,
) -> UserLimits:
    return UserLimits(
        user_id="u",
        policy_version=1,
        standard=TierLimits(limit_daily_credits_micro=std_daily, limit_monthly_credits_micro=std_monthly),
        premium=TierLimits(limit_daily_credits_micro=prem_daily, limit_monthly_credits_micro=prem_monthly),
    )


def period(status: QuotaStatusResponse, tier: str, name: str) -> QuotaPeriodStatus:
    [match] = [p for t in status.tiers if t.tier == tier for p in t.periods if p.period == name]
    return match


def test_fresh_user_has_everything_left() -> None:
    status = quota_status(limits(), {}, NOW, 80)
    assert [t.tier for t in status.tiers] == ["premium", "total"]
    assert [[p.period for p in t.periods] for t in status.tiers] == [
        ["daily", "monthly"],
        ["daily", "monthly"],
    ]
    daily = period(status, "total", "daily")
    assert daily == QuotaPeriodStatus(
        period="daily",
        limit_credits_micro=100_000_000,
        used_credits_micro=0,
        remaining_credits_micro=100_000_000,
        remaining_percentage=100,
        next_reset="2026-11-24T00:00:00Z",
        warning=False,
        exhausted=False,
    )
    assert period(status, "premium", "monthly").next_reset == "2026-12-01T00:00:00Z"
    assert status.warning_threshold_pct == 80
    assert quota_warnings(status) == []


def test_used_is_spent_plus_reserved_from_the_matching_rows() -> None:
    usage: dict[UsageKey, UsageRow] = {
        ("daily", DAY, BUCKET_PREMIUM): UsageRow(
            spent_credits_micro=40_000_000, reserved_credits_micro=5_000_000
        ),
        ("monthly", MONTH, BUCKET_TOTAL): UsageRow(spent_credits_micro=1),
        ("daily", DAY - dt.timedelta(days=1), BUCKET_TOTAL): UsageRow(spent_credits_micro=99_000_000),
    }
    status = quota_status(limits(), usage, NOW, 80)
    premium_daily = period(status, "premium", "daily")
    assert (premium_daily.used_credits_micro, premium_daily.remaining_credits_micro) == (
        45_000_000,
        5_000_000,
    )
    assert (premium_daily.remaining_percentage, premium_daily.warning, premium_daily.exhausted) == (
        10,
        True,
        False,
    )
    assert period(status, "total", "monthly").used_credits_micro == 1
    assert period(status, "total", "daily").used_credits_micro == 0


def pct_and_warning(remaining: int, threshold: int = 80) -> tuple[int, bool, bool]:
    usage = {("daily", DAY, BUCKET_TOTAL): UsageRow(spent_credits_micro=100_000_000 - remaining)}
    p = period(quota_status(limits(), usage, NOW, threshold), "total", "daily")
    return p.remaining_percentage, p.warning, p.exhausted


def test_percentage_is_floored_and_warning_is_at_or_below_100_minus_threshold() -> None:
    assert pct_and_warning(21_000_000) == (21, False, False)
    assert pct_and_warning(20_999_999) == (20, True, False)
    assert pct_and_warning(20_000_000) == (20, True, False)
    assert pct_and_warning(999_999) == (0, True, True)  # 0.99 % floors to 0: exhausted
    assert pct_and_warning(1_000_000) == (1, True, False)
    assert pct_and_warning(50_000_000, threshold=50) == (50, True, False)
    assert pct_and_warning(50_000_001, threshold=50) == (50, True, False)
    assert pct_and_warning(51_000_000, threshold=50) == (51, False, False)


def test_overspent_period_is_exhausted_with_nothing_remaining() -> None:
    usage = {
        ("daily", DAY, BUCKET_TOTAL): UsageRow(
            spent_credits_micro=90_000_000, reserved_credits_micro=20_000_000
        )
    }
    p = period(quota_status(limits(), usage, NOW, 80), "total", "daily")
    assert (p.used_credits_micro, p.remaining_credits_micro, p.remaining_percentage) == (110_000_000, 0, 0)
    assert p.exhausted and p.warning


def test_periods_with_limit_at_or_below_zero_are_left_out() -> None:
    status = quota_status(limits(prem_daily=0, prem_monthly=-5, std_monthly=0), {}, NOW, 80)
    assert status.tiers[0].tier == "premium"
    assert status.tiers[0].periods == []
    assert [p.period for p in status.tiers[1].periods] == ["daily"]


def test_next_reset_across_year_end() -> None:
    status = quota_status(limits(), {}, dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.UTC), 80)
    assert period(status, "total", "daily").next_reset == "2027-01-01T00:00:00Z"
    assert period(status, "total", "monthly").next_reset == "2027-01-01T00:00:00Z"


def test_quota_warnings_keep_only_warning_or_exhausted_periods() -> None:
    usage = {
        ("daily", DAY, BUCKET_PREMIUM): UsageRow(spent_credits_micro=50_000_000),
        ("monthly", MONTH, BUCKET_TOTAL): UsageRow(spent_credits_micro=850_000_000),
    }
    warnings = quota_warnings(quota_status(limits(), usage, NOW, 80))
    assert warnings == [
        QuotaWarning(
            tier="premium",
            period="daily",
            remaining_percentage=0,
            warning=True,
            exhausted=True,
            next_reset="2026-11-24T00:00:00Z",
        ),
        QuotaWarning(
            tier="total",
            period="monthly",
            remaining_percentage=15,
            warning=True,
            exhausted=False,
            next_reset="2026-12-01T00:00:00Z",
        ),
    ]


def test_wire_shapes() -> None:
    status = quota_status(limits(), {}, NOW, 80)
    body = json.loads(msgspec.json.encode(status))
    assert set(body) == {"tiers", "warning_threshold_pct"}
    assert set(body["tiers"][0]) == {"tier", "periods"}
    assert set(body["tiers"][0]["periods"][0]) == {
        "period",
        "limit_credits_micro",
        "used_credits_micro",
        "remaining_credits_micro",
        "remaining_percentage",
        "next_reset",
        "warning",
        "exhausted",
    }
    bare = QuotaWarning(tier="total", period="daily", remaining_percentage=50, warning=False, exhausted=False)
    assert json.loads(msgspec.json.encode(bare)) == {
        "tier": "total",
        "period": "daily",
        "remaining_percentage": 50,
        "warning": False,
        "exhausted": False,
    }
