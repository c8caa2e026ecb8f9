"""Settlement (original-domain.md §3 "Settlement") and the reserve/settle invariant."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minichat_host.domain.models import BUCKET_PREMIUM, BUCKET_TOTAL, BucketDelta, Period, UsageKey
from minichat_host.domain.quota import (
    Allow,
    SettlementMethod,
    TurnReserve,
    periods_for,
    reserve_for_model,
    reserve_writes,
    settle,
)
from minichat_host.plugins.types import ModelCatalogEntry, Usage

DAY = dt.date(2026, 11, 23)
MONTH = dt.date(2026, 11, 1)
PERIODS = [Period("daily", DAY), Period("monthly", MONTH)]

STANDARD = ModelCatalogEntry(
    id="S",
    provider_model_id="s",
    display_name="S",
    tier="standard",
    input_tokens_credit_multiplier_micro=1_000_000,
    output_tokens_credit_multiplier_micro=3_000_000,
)
PREMIUM = ModelCatalogEntry(
    id="P",
    provider_model_id="p",
    display_name="P",
    tier="premium",
    input_tokens_credit_multiplier_micro=3_000_000,
    output_tokens_credit_multiplier_micro=15_000_000,
)
# 4000-byte message with default budgets on the standard model: est_in 1210, max_out 4096.
RESERVE = TurnReserve(
    reserve_tokens=5306,
    max_output_tokens_applied=4096,
    reserved_credits_micro=1210 + 12288,
    minimal_generation_floor_applied=50,
)


def test_actual_charges_credits_of_the_reported_usage() -> None:
    result = settle(
        method="actual",
        reserve=RESERVE,
        usage=Usage(input_tokens=1000, output_tokens=500),
        model=STANDARD,
        periods=PERIODS,
        overshoot_tolerance=1.10,
        web_search_calls=2,
        code_interpreter_calls=1,
    )
    assert (result.charge_micro, result.charged_tokens, result.overshoot_capped) == (2500, 1500, False)
    assert result.bucket_deltas == (
        BucketDelta(
            "daily",
            DAY,
            BUCKET_TOTAL,
            reserved_delta=-13498,
            spent_delta=2500,
            calls_delta=1,
            input_tokens_delta=1000,
            output_tokens_delta=500,
            web_search_calls_delta=2,
            code_interpreter_calls_delta=1,
        ),
        BucketDelta(
            "monthly",
            MONTH,
            BUCKET_TOTAL,
            reserved_delta=-13498,
            spent_delta=2500,
            calls_delta=1,
            input_tokens_delta=1000,
            output_tokens_delta=500,
            web_search_calls_delta=2,
            code_interpreter_calls_delta=1,
        ),
    )
    assert (result.web_search_calls, result.code_interpreter_calls) == (2, 1)


def test_premium_settles_both_buckets_with_telemetry_on_total_only() -> None:
    reserve = TurnReserve(
        reserve_tokens=5306,
        max_output_tokens_applied=4096,
        reserved_credits_micro=65070,
        minimal_generation_floor_applied=50,
    )
    result = settle(
        method="actual",
        reserve=reserve,
        usage=Usage(input_tokens=1000, output_tokens=500),
        model=PREMIUM,
        periods=PERIODS,
        overshoot_tolerance=1.10,
        web_search_calls=1,
    )
    assert result.charge_micro == 3000 + 7500
    by_bucket = {(d.bucket, d.period_type): d for d in result.bucket_deltas}
    assert set(by_bucket) == {
        (BUCKET_TOTAL, "daily"),
        (BUCKET_TOTAL, "monthly"),
        (BUCKET_PREMIUM, "daily"),
        (BUCKET_PREMIUM, "monthly"),
    }
    premium = by_bucket[(BUCKET_PREMIUM, "daily")]
    assert (premium.reserved_delta, premium.spent_delta, premium.calls_delta) == (-65070, 10500, 1)
    assert (premium.input_tokens_delta, premium.output_tokens_delta, premium.web_search_calls_delta) == (
        0,
        0,
        0,
    )
    assert by_bucket[(BUCKET_TOTAL, "monthly")].web_search_calls_delta == 1


TOLERANCE_RESERVE = TurnReserve(
    reserve_tokens=1000,
    max_output_tokens_applied=500,
    reserved_credits_micro=2000,
    minimal_generation_floor_applied=50,
)


def test_overshoot_exactly_at_the_tolerance_is_charged_in_full() -> None:
    # 1100 / 1000 == 1.10: not above the tolerance, so the real usage is charged (beyond the reserve).
    result = settle(
        method="actual",
        reserve=TOLERANCE_RESERVE,
        usage=Usage(input_tokens=600, output_tokens=500),
        model=STANDARD,
        periods=PERIODS,
        overshoot_tolerance=1.10,
    )
    assert not result.overshoot_capped
    assert result.charge_micro == 600 + 1500
    assert result.charge_micro > TOLERANCE_RESERVE.reserved_credits_micro
    assert result.charged_tokens == 1100


def test_overshoot_just_above_the_tolerance_is_capped_at_the_reserve() -> None:
    result = settle(
        method="actual",
        reserve=TOLERANCE_RESERVE,
        usage=Usage(input_tokens=601, output_tokens=500),
        model=STANDARD,
        periods=PERIODS,
        overshoot_tolerance=1.10,
    )
    assert result.overshoot_capped
    assert (result.charge_micro, result.charged_tokens) == (2000, 1000)
    total = result.bucket_deltas[0]
    # The real token counts are still recorded as telemetry.
    assert (total.spent_delta, total.input_tokens_delta, total.output_tokens_delta) == (2000, 601, 500)


@pytest.mark.parametrize(("tokens", "capped"), [(1000, False), (1001, True)])
def test_tolerance_of_one(tokens: int, capped: bool) -> None:
    result = settle(
        method="actual",
        reserve=TOLERANCE_RESERVE,
        usage=Usage(input_tokens=tokens, output_tokens=0),
        model=STANDARD,
        periods=PERIODS,
        overshoot_tolerance=1.0,
    )
    assert result.overshoot_capped is capped


def test_large_overshoot_with_out_of_range_usage_is_capped_without_pricing_it() -> None:
    result = settle(
        method="actual",
        reserve=TOLERANCE_RESERVE,
        usage=Usage(input_tokens=50_000_000, output_tokens=0),
        model=STANDARD,
        periods=PERIODS,
        overshoot_tolerance=1.5,
    )
    assert result.overshoot_capped
    assert result.charge_micro == 2000


def test_actual_without_usage_charges_nothing() -> None:
    result = settle(
        method="actual", reserve=RESERVE, usage=None, model=STANDARD, periods=PERIODS, overshoot_tolerance=1.1
    )
    assert (result.charge_micro, result.charged_tokens) == (0, 0)


def test_estimated_charges_input_estimate_and_the_floor() -> None:
    result = settle(
        method="estimated",
        reserve=RESERVE,
        usage=Usage(input_tokens=99, output_tokens=99),
        model=STANDARD,
        periods=PERIODS,
        overshoot_tolerance=1.10,
        web_search_calls=1,
    )
    # est_in = 5306 - 4096 = 1210; credits(1210, 50, 1e6, 3e6) = 1210 + 150
    assert (result.method, result.charge_micro, result.charged_tokens) == ("estimated", 1360, 1260)
    for delta in result.bucket_deltas:
        assert (delta.input_tokens_delta, delta.output_tokens_delta) == (0, 0)
        assert delta.spent_delta == 1360
        assert delta.reserved_delta == -13498
        assert delta.web_search_calls_delta == 1


def test_estimated_input_is_never_negative_and_charged_tokens_never_exceed_the_reserve() -> None:
    reserve = TurnReserve(
        reserve_tokens=30,
        max_output_tokens_applied=100,
        reserved_credits_micro=500,
        minimal_generation_floor_applied=50,
    )
    result = settle(
        method="estimated",
        reserve=reserve,
        usage=None,
        model=STANDARD,
        periods=PERIODS,
        overshoot_tolerance=1.1,
    )
    assert result.charge_micro == 150  # credits(0, 50, 1e6, 3e6)
    assert result.charged_tokens == 30


def test_released_charges_nothing_and_drops_tool_counts() -> None:
    result = settle(
        method="released",
        reserve=RESERVE,
        usage=Usage(input_tokens=10, output_tokens=10),
        model=STANDARD,
        periods=PERIODS,
        overshoot_tolerance=1.10,
        web_search_calls=2,
        code_interpreter_calls=3,
    )
    assert (
        result.charge_micro,
        result.charged_tokens,
        result.web_search_calls,
        result.code_interpreter_calls,
    ) == (
        0,
        0,
        0,
        0,
    )
    for delta in result.bucket_deltas:
        assert delta == BucketDelta(
            delta.period_type, delta.period_start, BUCKET_TOTAL, reserved_delta=-13498, calls_delta=1
        )


@pytest.mark.parametrize(
    "reserve",
    [
        TurnReserve(
            reserve_tokens=0,
            max_output_tokens_applied=1,
            reserved_credits_micro=1,
            minimal_generation_floor_applied=1,
        ),
        TurnReserve(
            reserve_tokens=10,
            max_output_tokens_applied=-1,
            reserved_credits_micro=1,
            minimal_generation_floor_applied=1,
        ),
        TurnReserve(
            reserve_tokens=10,
            max_output_tokens_applied=1,
            reserved_credits_micro=-1,
            minimal_generation_floor_applied=1,
        ),
        TurnReserve(
            reserve_tokens=10,
            max_output_tokens_applied=1,
            reserved_credits_micro=1,
            minimal_generation_floor_applied=-1,
        ),
    ],
)
def test_invalid_reserve_values_are_refused(reserve: TurnReserve) -> None:
    with pytest.raises(ValueError):
        settle(
            method="estimated",
            reserve=reserve,
            usage=None,
            model=STANDARD,
            periods=PERIODS,
            overshoot_tolerance=1.1,
        )


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError):
        settle(
            method="bogus",
            reserve=RESERVE,
            usage=None,
            model=STANDARD,
            periods=PERIODS,  # type: ignore[arg-type]
            overshoot_tolerance=1.1,
        )


# --- invariant: settlement exactly undoes the reserve ------------------------------------------------
def apply(rows: dict[UsageKey, Counter[str]], deltas: Iterable[BucketDelta]) -> None:
    for d in deltas:
        row = rows.setdefault(d.key, Counter())
        row["reserved"] += d.reserved_delta
        row["spent"] += d.spent_delta
        row["calls"] += d.calls_delta
        row["input"] += d.input_tokens_delta
        row["output"] += d.output_tokens_delta
        row["web"] += d.web_search_calls_delta
        row["ci"] += d.code_interpreter_calls_delta


# No per-example deadline: the shared CI machine is noisy. (.hypothesis/ git-ignores itself.)
@settings(deadline=None, max_examples=300)
@given(
    premium=st.booleans(),
    est_in=st.integers(min_value=0, max_value=2_000_000),
    model_max_out=st.integers(min_value=1, max_value=200_000),
    stream_max_out=st.integers(min_value=1, max_value=200_000),
    in_mult=st.integers(min_value=0, max_value=50_000_000),
    out_mult=st.integers(min_value=0, max_value=50_000_000),
    floor=st.integers(min_value=1, max_value=1000),
    method=st.sampled_from(["actual", "estimated", "released"]),
    used_in=st.integers(min_value=0, max_value=3_000_000),
    used_out=st.integers(min_value=0, max_value=300_000),
    tolerance=st.sampled_from([1.0, 1.05, 1.1, 1.25, 1.5]),
    web=st.integers(min_value=0, max_value=5),
    ci=st.integers(min_value=0, max_value=20),
    started=st.datetimes(
        min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2040, 1, 1), timezones=st.just(dt.UTC)
    ),
    prior_reserved=st.integers(min_value=0, max_value=10**9),
)
def test_settlement_releases_exactly_what_preflight_reserved(
    premium: bool,
    est_in: int,
    model_max_out: int,
    stream_max_out: int,
    in_mult: int,
    out_mult: int,
    floor: int,
    method: SettlementMethod,
    used_in: int,
    used_out: int,
    tolerance: float,
    web: int,
    ci: int,
    started: dt.datetime,
    prior_reserved: int,
) -> None:
    entry = ModelCatalogEntry(
        id="m",
        provider_model_id="m",
        display_name="m",
        tier="premium" if premium else "standard",
        max_output_tokens=model_max_out,
        input_tokens_credit_multiplier_micro=in_mult,
        output_tokens_credit_multiplier_micro=out_mult,
    )
    estimate = reserve_for_model(
        est_in, entry, streaming_max_output_tokens=stream_max_out, minimal_generation_floor=floor
    )
    periods = periods_for(started)
    rows: dict[UsageKey, Counter[str]] = {}
    for period in periods:
        for bucket in (BUCKET_TOTAL, BUCKET_PREMIUM):
            rows[(period.period_type, period.period_start, bucket)] = Counter(reserved=prior_reserved)
    before = {key: Counter(row) for key, row in rows.items()}

    apply(rows, reserve_writes(Allow(effective=entry, tier=entry.tier, reserve=estimate), periods))
    result = settle(
        method=method,
        reserve=TurnReserve.of(estimate),
        usage=Usage(input_tokens=used_in, output_tokens=used_out),
        model=entry,
        periods=periods,
        overshoot_tolerance=tolerance,
        web_search_calls=web,
        code_interpreter_calls=ci,
    )
    apply(rows, result.bucket_deltas)

    touched = {(p.period_type, p.period_start, b) for p in periods for b in entry_buckets(premium)}
    for key, row in rows.items():
        assert row["reserved"] == before[key]["reserved"]
        if key in touched:
            assert row["spent"] == result.charge_micro
            assert row["calls"] == 1
        else:
            assert row["spent"] == row["calls"] == 0
        if key[2] != BUCKET_TOTAL:
            assert row["input"] == row["output"] == row["web"] == row["ci"] == 0
    assert result.charge_micro >= 0
    if method == "released":
        assert result.charge_micro == 0
    if result.overshoot_capped:
        assert result.charge_micro == estimate.reserved_credits_micro
    assert result.charged_tokens <= max(estimate.reserve_tokens, used_in + used_out)


def entry_buckets(premium: bool) -> tuple[str, ...]:
    return (BUCKET_TOTAL, BUCKET_PREMIUM) if premium else (BUCKET_TOTAL,)
