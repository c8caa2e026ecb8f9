"""`GET /quota/status`: the caller's ledger rows of the current periods against the policy's limits."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import databases

from api.helpers import DEV_TENANT, DEV_USER, PREFIX, ClientFactory, seed_usage
from minichat_host.config import QuotaConfig
from minichat_host.domain.catalog import CatalogService, QuotaStatusService
from minichat_host.plugins.types import TierLimits, UserLimits

LIMITS = {
    "default_standard_limits": {
        "limit_daily_credits_micro": 1_000_000,
        "limit_monthly_credits_micro": 10_000_000,
    },
    # A monthly premium limit of 0 means "no such period": it is left out of the answer.
    "default_premium_limits": {"limit_daily_credits_micro": 400_000, "limit_monthly_credits_micro": 0},
}


def next_month(day: dt.date) -> dt.date:
    return dt.date(day.year + (day.month == 12), day.month % 12 + 1, 1)


async def seed_current_periods(database: databases.Database, **values: Any) -> None:
    """Seed the row for today *and* tomorrow (this month and next month): whichever the server sees as
    current, even across a midnight during the test, holds the same values."""
    today = dt.datetime.now(dt.UTC).date()
    bucket, period_type = values.pop("bucket"), values.pop("period_type")
    starts = (
        [today, today + dt.timedelta(days=1)]
        if period_type == "daily"
        else [today.replace(day=1), next_month(today)]
    )
    for start in starts:
        await seed_usage(database, period_type=period_type, period_start=start, bucket=bucket, **values)


async def test_quota_status_from_the_ledger_and_the_policy_limits(
    make_client: ClientFactory, database: databases.Database
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    await seed_current_periods(database, period_type="daily", bucket="total", spent=600_000, reserved=250_000)
    await seed_current_periods(database, period_type="monthly", bucket="total", spent=1_000_000)
    await seed_current_periods(database, period_type="daily", bucket="tier:premium", spent=500_000)
    # Not counted: an older day, another user, another tenant.
    await seed_usage(
        database,
        period_type="daily",
        period_start=today - dt.timedelta(days=2),
        bucket="total",
        spent=999_999,
    )
    await seed_current_periods(
        database, period_type="daily", bucket="total", spent=777, user_id=uuid.uuid4(), tenant_id=DEV_TENANT
    )
    await seed_current_periods(
        database, period_type="daily", bucket="total", spent=777, user_id=DEV_USER, tenant_id=uuid.uuid4()
    )

    client = await make_client(plugins={"settings": {"policy_static": LIMITS}})
    response = await client.get(f"{PREFIX}/quota/status")
    assert response.status == 200
    body = await response.json()
    assert body["warning_threshold_pct"] == 80
    by_tier = {tier["tier"]: tier["periods"] for tier in body["tiers"]}
    assert list(by_tier) == ["premium", "total"]

    def strip_reset(periods: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in p.items() if k != "next_reset"} for p in periods]

    assert strip_reset(by_tier["premium"]) == [
        {
            "period": "daily",
            "limit_credits_micro": 400_000,
            "used_credits_micro": 500_000,
            "remaining_credits_micro": 0,
            "remaining_percentage": 0,
            "warning": True,
            "exhausted": True,
        }
    ]
    assert strip_reset(by_tier["total"]) == [
        {
            "period": "daily",
            "limit_credits_micro": 1_000_000,
            "used_credits_micro": 850_000,
            "remaining_credits_micro": 150_000,
            "remaining_percentage": 15,
            "warning": True,
            "exhausted": False,
        },
        {
            "period": "monthly",
            "limit_credits_micro": 10_000_000,
            "used_credits_micro": 1_000_000,
            "remaining_credits_micro": 9_000_000,
            "remaining_percentage": 90,
            "warning": False,
            "exhausted": False,
        },
    ]
    for periods in by_tier.values():
        for period in periods:
            reset = dt.datetime.fromisoformat(period["next_reset"])
            assert period["next_reset"].endswith("T00:00:00Z")
            assert reset > dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
            if period["period"] == "monthly":
                assert reset.day == 1


async def test_quota_status_without_usage_and_with_another_threshold(make_client: ClientFactory) -> None:
    client = await make_client(quota={"warning_threshold_pct": 50})
    body = await (await client.get(f"{PREFIX}/quota/status")).json()
    assert body["warning_threshold_pct"] == 50
    for tier in body["tiers"]:
        assert [p["period"] for p in tier["periods"]] == ["daily", "monthly"]
        for period in tier["periods"]:
            assert period["used_credits_micro"] == 0
            assert period["remaining_credits_micro"] == period["limit_credits_micro"]
            assert period["remaining_percentage"] == 100
            assert period["warning"] is False and period["exhausted"] is False


class FixedLimitsPolicy:
    """Stands in for the plugin host: version 7, fixed limits."""

    async def call(self, capability: str, hook: str, **kwargs: Any) -> Any:
        assert capability == "model_policy"
        if hook == "minichat_get_current_policy_version":
            return 7
        assert hook == "minichat_get_user_limits" and kwargs["policy_version"] == 7
        return UserLimits(
            user_id=kwargs["user_id"],
            policy_version=7,
            standard=TierLimits(limit_daily_credits_micro=1000, limit_monthly_credits_micro=5000),
            premium=TierLimits(limit_daily_credits_micro=100, limit_monthly_credits_micro=500),
        )


async def test_quota_status_service_uses_the_periods_of_its_clock(database: databases.Database) -> None:
    now = dt.datetime(2026, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    await seed_usage(database, period_type="daily", period_start=now.date(), bucket="total", spent=200)
    await seed_usage(
        database, period_type="monthly", period_start=dt.date(2026, 12, 1), bucket="total", spent=4000
    )
    await seed_usage(
        database, period_type="daily", period_start=dt.date(2026, 12, 30), bucket="total", spent=900
    )
    await seed_usage(
        database,
        period_type="monthly",
        period_start=dt.date(2026, 12, 1),
        bucket="tier:premium",
        spent=20,
        reserved=5,
    )
    service = QuotaStatusService(
        database, CatalogService(FixedLimitsPolicy()), QuotaConfig(), clock=lambda: now
    )
    status = await service.status(DEV_TENANT, DEV_USER)
    periods = {(tier.tier, p.period): p for tier in status.tiers for p in tier.periods}
    assert periods["total", "daily"].used_credits_micro == 200
    assert periods["total", "daily"].next_reset == "2027-01-01T00:00:00Z"
    assert periods["total", "monthly"].used_credits_micro == 4000
    assert periods["total", "monthly"].remaining_percentage == 20
    assert periods["total", "monthly"].warning is True
    assert periods["total", "monthly"].next_reset == "2027-01-01T00:00:00Z"
    assert periods["premium", "daily"].used_credits_micro == 0
    assert periods["premium", "monthly"].used_credits_micro == 25
    assert periods["premium", "monthly"].remaining_percentage == 95
