"""Small value types shared by the quota, settlement and context rules and the repositories.

Everything here is plain data: no I/O, no database types. The repository maps `UsageRow` from and
`BucketDelta` onto `quota_usage` rows keyed by `(period_type, period_start, bucket)`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final, Literal, Protocol

PeriodType = Literal["daily", "monthly"]
Tier = Literal["standard", "premium"]
Bucket = Literal["total", "tier:premium"]

BUCKET_TOTAL: Final[Bucket] = "total"
BUCKET_PREMIUM: Final[Bucket] = "tier:premium"

# (period_type, period_start, bucket): the part of the quota_usage unique key below (tenant, user).
UsageKey = tuple[PeriodType, dt.date, str]


class EstimationBudgetsLike(Protocol):
    """Satisfied by both the plugin's per-model `EstimationBudgets` and the config's module-level budgets."""

    @property
    def bytes_per_token_conservative(self) -> int: ...
    @property
    def fixed_overhead_tokens(self) -> int: ...
    @property
    def safety_margin_pct(self) -> int: ...
    @property
    def image_token_budget(self) -> int: ...
    @property
    def tool_surcharge_tokens(self) -> int: ...
    @property
    def web_search_surcharge_tokens(self) -> int: ...
    @property
    def code_interpreter_surcharge_tokens(self) -> int: ...
    @property
    def minimal_generation_floor(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Period:
    """One quota period: a UTC day (`period_start` = that day) or a UTC month (its first day)."""

    period_type: PeriodType
    period_start: dt.date


@dataclass(frozen=True, slots=True)
class UsageRow:
    """The enforcement-relevant values of one quota_usage row (a missing row reads as all zeros)."""

    spent_credits_micro: int = 0
    reserved_credits_micro: int = 0
    web_search_calls: int = 0
    code_interpreter_calls: int = 0

    @property
    def used_credits_micro(self) -> int:
        return self.spent_credits_micro + self.reserved_credits_micro


@dataclass(frozen=True, slots=True)
class BucketDelta:
    """Increments the repository adds to one quota_usage row (upserting it when absent).

    Negative `reserved_delta` releases a reserve. Token and tool counters are telemetry and only ever
    non-zero on the `total` bucket.
    """

    period_type: PeriodType
    period_start: dt.date
    bucket: str
    reserved_delta: int = 0
    spent_delta: int = 0
    calls_delta: int = 0
    input_tokens_delta: int = 0
    output_tokens_delta: int = 0
    web_search_calls_delta: int = 0
    code_interpreter_calls_delta: int = 0

    @property
    def key(self) -> UsageKey:
        return (self.period_type, self.period_start, self.bucket)


def buckets_for_tier(tier: Tier) -> tuple[Bucket, ...]:
    """Buckets a turn of this tier reserves and settles: `total` always, `tier:premium` for premium."""
    return (BUCKET_TOTAL, BUCKET_PREMIUM) if tier == "premium" else (BUCKET_TOTAL,)
