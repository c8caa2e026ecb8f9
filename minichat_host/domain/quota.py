"""Quota rules (original-domain.md §3): reserve estimate, periods, the downgrade cascade, reserve writes,
settlement, and the quota status / warnings wire shapes.

All functions are pure: the chat core loads the usage rows (FOR UPDATE) and the policy, calls these, and
hands the resulting `BucketDelta`s to the quota repository inside its transaction.

Deliberate differences from the original, each one so that what is checked is what gets written:
- The cascade checks each tier with the reserve of the model it would actually use in that tier
  (`reserve_for(candidate)`); the original checks every tier with a provisional reserve priced at the
  selected model's multipliers and the config's output cap, then writes a different (final) reserve.
  Without a downgrade the two agree.
- Daily tool quotas reject only a request that would use the tool (`wants_web_search` /
  `wants_code_interpreter`) on a model that supports it; the original rejects on model support alone,
  which locks a user out of plain chat for the rest of the day once the tool quota is used up.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Final, Literal

import msgspec

from minichat_host.config import QuotaConfig
from minichat_host.domain.credits import credits_micro, estimate_text_tokens
from minichat_host.domain.errors import InputTooLong, QuotaScope
from minichat_host.domain.models import (
    BUCKET_PREMIUM,
    BUCKET_TOTAL,
    BucketDelta,
    EstimationBudgetsLike,
    Period,
    PeriodType,
    Tier,
    UsageKey,
    UsageRow,
    buckets_for_tier,
)
from minichat_host.plugins.types import ModelCatalogEntry, PolicySnapshot, TierLimits, Usage, UserLimits

DowngradeReason = Literal[
    "premium_quota_exhausted", "force_standard_tier", "disable_premium_tier", "model_disabled"
]
SettlementMethod = Literal["actual", "estimated", "released"]

_EMPTY_ROW: Final = UsageRow()


# --- reserve estimate ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReserveEstimate:
    """What preflight reserves for one model; the five values are stored on the turn row."""

    est_input_tokens: int
    max_output_tokens_applied: int
    reserve_tokens: int
    reserved_credits_micro: int
    minimal_generation_floor_applied: int


def estimate_input_tokens(
    *,
    message_bytes: int,
    image_count: int,
    has_ready_documents: bool,
    web_search: bool,
    code_interpreter: bool,
    prior_context_tokens: int,
    budgets: EstimationBudgetsLike,
) -> int:
    """`est_in` = text estimate + images + one surcharge per enabled tool + prior context tokens.

    `has_ready_documents` means file search will run (ready documents in the chat); `code_interpreter`
    means files for the code interpreter are attached. Each surcharge counts once, not per file.
    """
    if image_count < 0 or prior_context_tokens < 0:
        raise ValueError("image_count and prior_context_tokens must not be negative")
    return (
        estimate_text_tokens(message_bytes, budgets)
        + image_count * budgets.image_token_budget
        + (budgets.tool_surcharge_tokens if has_ready_documents else 0)
        + (budgets.web_search_surcharge_tokens if web_search else 0)
        + (budgets.code_interpreter_surcharge_tokens if code_interpreter else 0)
        + prior_context_tokens
    )


def max_output_tokens_for(model: ModelCatalogEntry, streaming_max_output_tokens: int) -> int:
    """`max_output_tokens_applied` = the smaller of the model's and the deployment's output cap."""
    return min(model.max_output_tokens, streaming_max_output_tokens)


def reserve_for_model(
    est_input_tokens: int,
    model: ModelCatalogEntry,
    *,
    streaming_max_output_tokens: int,
    minimal_generation_floor: int,
) -> ReserveEstimate:
    """Price `est_input_tokens` plus the applied output cap at `model`'s multipliers."""
    max_out = max_output_tokens_for(model, streaming_max_output_tokens)
    return ReserveEstimate(
        est_input_tokens=est_input_tokens,
        max_output_tokens_applied=max_out,
        reserve_tokens=est_input_tokens + max_out,
        reserved_credits_micro=credits_micro(
            est_input_tokens,
            max_out,
            model.input_tokens_credit_multiplier_micro,
            model.output_tokens_credit_multiplier_micro,
        ),
        minimal_generation_floor_applied=minimal_generation_floor,
    )


def estimate_reserve(
    *,
    message_bytes: int,
    image_count: int,
    has_ready_documents: bool,
    web_search: bool,
    code_interpreter: bool,
    prior_context_tokens: int,
    budgets: EstimationBudgetsLike,
    model: ModelCatalogEntry,
    streaming_max_output_tokens: int,
) -> ReserveEstimate:
    """The full reserve estimate for one model (module-level `budgets`, as the original's preflight)."""
    est_in = estimate_input_tokens(
        message_bytes=message_bytes,
        image_count=image_count,
        has_ready_documents=has_ready_documents,
        web_search=web_search,
        code_interpreter=code_interpreter,
        prior_context_tokens=prior_context_tokens,
        budgets=budgets,
    )
    return reserve_for_model(
        est_in,
        model,
        streaming_max_output_tokens=streaming_max_output_tokens,
        minimal_generation_floor=budgets.minimal_generation_floor,
    )


def ensure_input_fits(message_bytes: int, model: ModelCatalogEntry) -> int:
    """The message's text estimate under the model's own budgets; `InputTooLong` above `max_input_tokens`."""
    estimate = estimate_text_tokens(message_bytes, model.estimation_budgets)
    if estimate > model.max_input_tokens:
        raise InputTooLong(
            f"The message is estimated at {estimate} tokens; model {model.id} accepts at most "
            f"{model.max_input_tokens} input tokens."
        )
    return estimate


# --- periods ------------------------------------------------------------------------------------------
def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise ValueError("a timezone-aware datetime is required")
    return now.astimezone(dt.UTC)


def periods_for(now: dt.datetime) -> tuple[Period, Period]:
    """The quota periods containing `now`: (daily, UTC day) and (monthly, first day of the UTC month)."""
    return _periods_of(_utc(now).date())


@functools.lru_cache(maxsize=8)
def _periods_of(today: dt.date) -> tuple[Period, Period]:
    # Cached: every turn and quota read asks, and the two frozen records change once a day.
    return (Period("daily", today), Period("monthly", today.replace(day=1)))


def next_reset(period_type: PeriodType, now: dt.datetime) -> dt.datetime:
    """Start of the next period: the next UTC midnight, or 00:00 UTC on the first of the next month."""
    today = _utc(now).date()
    if period_type == "daily":
        nxt = today + dt.timedelta(days=1)
    elif today.month == 12:
        nxt = dt.date(today.year + 1, 1, 1)
    else:
        nxt = dt.date(today.year, today.month + 1, 1)
    return dt.datetime(nxt.year, nxt.month, nxt.day, tzinfo=dt.UTC)


@functools.lru_cache(maxsize=8)
def _next_reset_text(period_type: PeriodType, period_start: dt.date) -> str:
    """`rfc3339(next_reset(...))` for the period starting on `period_start` (cached: it changes once a day,
    and every finalized turn and quota read formats it)."""
    start = dt.datetime(period_start.year, period_start.month, period_start.day, tzinfo=dt.UTC)
    return rfc3339(next_reset(period_type, start))


def rfc3339(moment: dt.datetime) -> str:
    """`2026-11-23T00:00:00Z` form (UTC, whole seconds), as the original serializes resets."""
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- cascade ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Allow:
    """The selected model runs as-is."""

    effective: ModelCatalogEntry
    tier: Tier
    reserve: ReserveEstimate

    @property
    def quota_decision(self) -> Literal["allow", "downgrade"]:
        return "allow"

    @property
    def buckets(self) -> tuple[str, ...]:
        return buckets_for_tier(self.tier)


@dataclass(frozen=True, slots=True)
class Downgrade:
    """Another model runs instead of the selected one, for `reason`."""

    effective: ModelCatalogEntry
    tier: Tier
    reserve: ReserveEstimate
    downgrade_from: str
    reason: DowngradeReason

    @property
    def quota_decision(self) -> Literal["allow", "downgrade"]:
        return "downgrade"

    @property
    def buckets(self) -> tuple[str, ...]:
        return buckets_for_tier(self.tier)


@dataclass(frozen=True, slots=True)
class Reject:
    """Nothing fits: answer 429 `quota_exceeded` with this `quota_scope` and write nothing."""

    scope: QuotaScope


Granted = Allow | Downgrade
QuotaDecision = Allow | Downgrade | Reject


def find_model(snapshot: PolicySnapshot, model_id: str) -> ModelCatalogEntry | None:
    """The catalog entry with this id, enabled or not."""
    return next((m for m in snapshot.model_catalog if m.id == model_id), None)


def model_for_tier(snapshot: PolicySnapshot, tier: Tier, selected_model_id: str) -> ModelCatalogEntry | None:
    """Selected id if enabled in `tier`, else the tier's enabled `is_default` entry, else its first one."""
    enabled = [m for m in snapshot.model_catalog if m.tier == tier and m.enabled]
    for candidate in enabled:
        if candidate.id == selected_model_id:
            return candidate
    for candidate in enabled:
        if candidate.preference is not None and candidate.preference.is_default:
            return candidate
    return enabled[0] if enabled else None


def _tier_limits(limits: UserLimits, bucket: str) -> TierLimits | None:
    if bucket == BUCKET_TOTAL:
        return limits.standard
    if bucket == BUCKET_PREMIUM:
        return limits.premium
    return None


def _limit_for(limits: UserLimits, bucket: str, period_type: PeriodType) -> int:
    tier_limits = _tier_limits(limits, bucket)
    if tier_limits is None:
        return 0  # an unknown bucket has no budget
    if period_type == "daily":
        return tier_limits.limit_daily_credits_micro
    return tier_limits.limit_monthly_credits_micro


def _tier_fits(
    tier: Tier,
    reserve_micro: int,
    limits: UserLimits,
    usage: Mapping[UsageKey, UsageRow],
    periods: Sequence[Period],
) -> bool:
    # Every required bucket in every period must take the reserve: spent + reserved + reserve <= limit.
    for bucket in buckets_for_tier(tier):
        for period in periods:
            row = usage.get((period.period_type, period.period_start, bucket), _EMPTY_ROW)
            if row.used_credits_micro + reserve_micro > _limit_for(limits, bucket, period.period_type):
                return False
    return True


def decide_quota(
    *,
    selected_model_id: str,
    snapshot: PolicySnapshot,
    limits: UserLimits,
    usage: Mapping[UsageKey, UsageRow],
    periods: Sequence[Period],
    reserve_for: Callable[[ModelCatalogEntry], ReserveEstimate],
    wants_web_search: bool,
    wants_code_interpreter: bool,
    quota: QuotaConfig,
) -> QuotaDecision:
    """The premium → standard downgrade cascade, then the daily tool quotas (original-domain.md §3).

    - Start tier = the selected entry's tier; a disabled entry keeps its tier with reason
      `model_disabled`; an unknown id starts at premium with reason `model_disabled`.
    - Premium tries [premium, standard]; standard tries [standard] only (never escalates).
    - Premium is skipped under `force_standard_tier` / `disable_premium_tier`, and is unavailable when
      a bucket (total, tier:premium) in a period cannot take the reserve (`premium_quota_exhausted`).
      The first reason recorded wins.
    - The model in a tier comes from `model_for_tier`; a tier with no enabled model is skipped.
    - Same model and no reason ⇒ Allow, else Downgrade; no tier ⇒ Reject("tokens").
    - Then on the (total, daily) row: a request using web search on a model that supports it with
      `web_search_calls >= web_search_daily_quota` ⇒ Reject("web_search"); likewise code interpreter.

    `usage` holds the locked rows by (period_type, period_start, bucket); absent rows count as zero.
    `reserve_for(model)` prices the request for a candidate model (see `reserve_for_model`).
    """
    selected = find_model(snapshot, selected_model_id)
    reason: DowngradeReason | None = None
    start_tier: Tier
    if selected is None:
        start_tier, reason = "premium", "model_disabled"
    else:
        start_tier = selected.tier
        if not selected.enabled:
            reason = "model_disabled"
    cascade: tuple[Tier, ...] = ("premium", "standard") if start_tier == "premium" else ("standard",)
    switches = snapshot.kill_switches

    granted: Granted | None = None
    for tier in cascade:
        if tier == "premium":
            if switches.force_standard_tier:
                reason = reason or "force_standard_tier"
                continue
            if switches.disable_premium_tier:
                reason = reason or "disable_premium_tier"
                continue
        candidate = model_for_tier(snapshot, tier, selected_model_id)
        if candidate is None:
            continue
        reserve = reserve_for(candidate)
        if not _tier_fits(tier, reserve.reserved_credits_micro, limits, usage, periods):
            if tier == "premium":
                reason = reason or "premium_quota_exhausted"
            continue
        if candidate.id == selected_model_id and reason is None:
            granted = Allow(effective=candidate, tier=tier, reserve=reserve)
        else:
            granted = Downgrade(
                effective=candidate,
                tier=tier,
                reserve=reserve,
                downgrade_from=selected_model_id,
                reason=reason or "premium_quota_exhausted",
            )
        break
    if granted is None:
        return Reject("tokens")

    daily = next((p for p in periods if p.period_type == "daily"), None)
    daily_row = (
        usage.get((daily.period_type, daily.period_start, BUCKET_TOTAL), _EMPTY_ROW)
        if daily is not None
        else _EMPTY_ROW
    )
    tools = granted.effective.general_config.tool_support
    if wants_web_search and tools.web_search and daily_row.web_search_calls >= quota.web_search_daily_quota:
        return Reject("web_search")
    if (
        wants_code_interpreter
        and tools.code_interpreter
        and daily_row.code_interpreter_calls >= quota.code_interpreter_daily_quota
    ):
        return Reject("code_interpreter")
    return granted


def reserve_writes(decision: Granted, periods: Sequence[Period]) -> list[BucketDelta]:
    """The reserve increments for the turn transaction: one per required bucket * period."""
    amount = decision.reserve.reserved_credits_micro
    return [
        BucketDelta(period.period_type, period.period_start, bucket, reserved_delta=amount)
        for bucket in decision.buckets
        for period in periods
    ]


# --- settlement ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TurnReserve:
    """The preflight values stored on the turn row that settlement needs."""

    reserve_tokens: int
    max_output_tokens_applied: int
    reserved_credits_micro: int
    minimal_generation_floor_applied: int

    @classmethod
    def of(cls, estimate: ReserveEstimate) -> TurnReserve:
        return cls(
            reserve_tokens=estimate.reserve_tokens,
            max_output_tokens_applied=estimate.max_output_tokens_applied,
            reserved_credits_micro=estimate.reserved_credits_micro,
            minimal_generation_floor_applied=estimate.minimal_generation_floor_applied,
        )


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a finalized turn is charged and the quota_usage increments that record it."""

    method: SettlementMethod
    charge_micro: int
    charged_tokens: int
    overshoot_capped: bool
    web_search_calls: int
    code_interpreter_calls: int
    bucket_deltas: tuple[BucketDelta, ...]


@functools.lru_cache(maxsize=8)
def _tolerance(factor: float) -> Fraction:
    # The config value is a decimal the operator wrote (1.10); compare against that exact rational,
    # not against the binary float nearest to it. Cached: one config value, read on every settlement.
    return Fraction(str(factor))


def settle(
    *,
    method: SettlementMethod,
    reserve: TurnReserve,
    usage: Usage | None,
    model: ModelCatalogEntry,
    periods: Sequence[Period],
    overshoot_tolerance: float,
    web_search_calls: int = 0,
    code_interpreter_calls: int = 0,
) -> Settlement:
    """Settle one turn against its preflight `periods`, priced by `model` from the policy_version_applied
    snapshot (its tier picks the buckets, so they are the ones preflight reserved).

    - actual: `(in + out) / reserve_tokens > overshoot_tolerance` ⇒ charge the reserve
      (`overshoot_capped`, charged_tokens = reserve_tokens); else credits(in, out), which may exceed
      the reserve within the tolerance. Token telemetry goes to `total`.
    - estimated: est_in = max(0, reserve_tokens - max_output_tokens_applied); charge =
      credits(est_in, floor); charged_tokens = min(reserve_tokens, est_in + floor); no token telemetry.
    - released: charge 0, tool counts 0.
    Every bucket * period gets reserved -= reserved_credits_micro, spent += charge, calls += 1; tool
    counters go to `total` only.
    """
    if reserve.reserve_tokens <= 0:
        raise ValueError("settlement needs reserve_tokens > 0")
    if min(reserve.max_output_tokens_applied, reserve.reserved_credits_micro) < 0:
        raise ValueError("settlement values must not be negative")
    if min(reserve.minimal_generation_floor_applied, web_search_calls, code_interpreter_calls) < 0:
        raise ValueError("settlement values must not be negative")
    in_mult = model.input_tokens_credit_multiplier_micro
    out_mult = model.output_tokens_credit_multiplier_micro
    input_tokens = output_tokens = 0
    overshoot_capped = False
    if method == "actual":
        if usage is not None:
            input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("actual token counts must not be negative")
        total_tokens = input_tokens + output_tokens
        tolerance = _tolerance(overshoot_tolerance)
        # total / reserve > n / d, in integers (reserve_tokens > 0, d > 0).
        if total_tokens * tolerance.denominator > tolerance.numerator * reserve.reserve_tokens:
            charge, charged_tokens, overshoot_capped = (
                reserve.reserved_credits_micro,
                reserve.reserve_tokens,
                True,
            )
        else:
            charge = credits_micro(input_tokens, output_tokens, in_mult, out_mult)
            charged_tokens = total_tokens
    elif method == "estimated":
        est_in = max(0, reserve.reserve_tokens - reserve.max_output_tokens_applied)
        floor = reserve.minimal_generation_floor_applied
        charge = credits_micro(est_in, floor, in_mult, out_mult)
        charged_tokens = min(reserve.reserve_tokens, est_in + floor)
    elif method == "released":
        charge = charged_tokens = 0
        web_search_calls = code_interpreter_calls = 0
    else:
        raise ValueError(f"unknown settlement method {method!r}")

    deltas: list[BucketDelta] = []
    for bucket in buckets_for_tier(model.tier):
        on_total = bucket == BUCKET_TOTAL
        for period in periods:
            deltas.append(
                BucketDelta(
                    period.period_type,
                    period.period_start,
                    bucket,
                    reserved_delta=-reserve.reserved_credits_micro,
                    spent_delta=charge,
                    calls_delta=1,
                    input_tokens_delta=input_tokens if on_total else 0,
                    output_tokens_delta=output_tokens if on_total else 0,
                    web_search_calls_delta=web_search_calls if on_total else 0,
                    code_interpreter_calls_delta=code_interpreter_calls if on_total else 0,
                )
            )
    return Settlement(
        method=method,
        charge_micro=charge,
        charged_tokens=charged_tokens,
        overshoot_capped=overshoot_capped,
        web_search_calls=web_search_calls,
        code_interpreter_calls=code_interpreter_calls,
        bucket_deltas=tuple(deltas),
    )


# --- quota status (GET /quota/status, done.quota_warnings) -------------------------------------------
QuotaTier = Literal["premium", "total"]
Percentage = Annotated[int, msgspec.Meta(ge=0, le=100)]


class QuotaPeriodStatus(msgspec.Struct, kw_only=True):
    """Quota details for a single period within a tier."""

    period: PeriodType
    limit_credits_micro: int
    used_credits_micro: int
    remaining_credits_micro: int
    remaining_percentage: Percentage
    next_reset: str
    warning: bool
    exhausted: bool


class QuotaTierStatus(msgspec.Struct, kw_only=True):
    """Quota status for a single tier."""

    tier: QuotaTier
    periods: list[QuotaPeriodStatus]


class QuotaStatusResponse(msgspec.Struct, kw_only=True):
    """Full quota status for the authenticated user, broken down by tier and period."""

    tiers: list[QuotaTierStatus]
    warning_threshold_pct: Annotated[int, msgspec.Meta(ge=0, le=100)]


class QuotaWarning(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Per-tier, per-period quota warning entry included in the SSE done event."""

    tier: QuotaTier
    period: PeriodType
    remaining_percentage: Percentage
    warning: bool
    exhausted: bool
    next_reset: str | None = None


def quota_status(
    limits: UserLimits,
    usage: Mapping[UsageKey, UsageRow],
    now: dt.datetime,
    warning_threshold_pct: int,
) -> QuotaStatusResponse:
    """Tiers premium (`tier:premium`, premium limits) and total (`total`, standard limits) * the periods
    containing `now`; a period whose limit is ≤ 0 is left out.

    used = spent + reserved; remaining = max(0, limit - used); remaining_percentage =
    floor(remaining * 100 / limit); warning when that is ≤ 100 - threshold; exhausted when it is 0.
    """
    tier_buckets: tuple[tuple[QuotaTier, str], ...] = (("premium", BUCKET_PREMIUM), ("total", BUCKET_TOTAL))
    tiers: list[QuotaTierStatus] = []
    periods = periods_for(now)
    for tier_name, bucket in tier_buckets:
        period_status: list[QuotaPeriodStatus] = []
        for period in periods:
            limit = _limit_for(limits, bucket, period.period_type)
            if limit <= 0:
                continue
            used = usage.get((period.period_type, period.period_start, bucket), _EMPTY_ROW).used_credits_micro
            remaining = max(0, limit - used)
            pct = remaining * 100 // limit
            period_status.append(
                QuotaPeriodStatus(
                    period=period.period_type,
                    limit_credits_micro=limit,
                    used_credits_micro=used,
                    remaining_credits_micro=remaining,
                    remaining_percentage=pct,
                    next_reset=_next_reset_text(period.period_type, period.period_start),
                    warning=pct <= 100 - warning_threshold_pct,
                    exhausted=pct == 0,
                )
            )
        tiers.append(QuotaTierStatus(tier=tier_name, periods=period_status))
    return QuotaStatusResponse(tiers=tiers, warning_threshold_pct=warning_threshold_pct)


def quota_warnings(status: QuotaStatusResponse) -> list[QuotaWarning]:
    """The `done.quota_warnings` entries: every period in warning or exhausted, with its next reset.

    The list is empty when every period is healthy (the original lists healthy periods too, without
    `next_reset`; the published contract describes an empty list for that case).
    """
    return [
        QuotaWarning(
            tier=tier.tier,
            period=period.period,
            remaining_percentage=period.remaining_percentage,
            warning=period.warning,
            exhausted=period.exhausted,
            next_reset=period.next_reset,
        )
        for tier in status.tiers
        for period in tier.periods
        if period.warning or period.exhausted
    ]
