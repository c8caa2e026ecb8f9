"""Credit and token arithmetic: the reference's numeric examples and the bounds."""

from __future__ import annotations

import pytest

from minichat_host.config import EstimationBudgetsConfig
from minichat_host.domain.credits import (
    MAX_MULTIPLIER_MICRO,
    MAX_TOKENS,
    CreditBoundsError,
    credits_micro,
    estimate_item_tokens,
    estimate_text_tokens,
    utf8_len,
)
from minichat_host.plugins.types import EstimationBudgets


def test_reference_example() -> None:
    assert credits_micro(1000, 500, 1_000_000, 3_000_000) == 2500


def test_each_component_rounds_up_on_its_own() -> None:
    # Each side is 0.5 credits_micro before rounding: ceil per side gives 1 + 1.
    assert credits_micro(1, 1, 500_000, 500_000) == 2
    # Rounding the sum instead would give 1.
    assert credits_micro(1, 0, 500_000, 500_000) == 1
    assert credits_micro(0, 0, 3_000_000, 15_000_000) == 0
    assert credits_micro(3, 0, 333_334, 1) == 2  # 1.000002 -> 2


def test_zero_multiplier_is_free() -> None:
    assert credits_micro(1000, 1000, 0, 0) == 0


def test_bounds_are_inclusive() -> None:
    top = credits_micro(MAX_TOKENS, MAX_TOKENS, MAX_MULTIPLIER_MICRO, MAX_MULTIPLIER_MICRO)
    assert top == 2 * MAX_TOKENS * MAX_MULTIPLIER_MICRO // 1_000_000


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((-1, 0, 1, 1), "input_tokens"),
        ((0, MAX_TOKENS + 1, 1, 1), "output_tokens"),
        ((0, 0, -1, 1), "input multiplier"),
        ((0, 0, 1, MAX_MULTIPLIER_MICRO + 1), "output multiplier"),
    ],
)
def test_out_of_bounds_is_rejected(args: tuple[int, int, int, int], needle: str) -> None:
    with pytest.raises(CreditBoundsError, match=needle):
        credits_micro(*args)


def test_text_estimate_reference_example() -> None:
    assert estimate_text_tokens(4000, EstimationBudgetsConfig()) == 1210


def test_text_estimate_of_empty_text_is_the_overhead_with_margin() -> None:
    assert estimate_text_tokens(0, EstimationBudgetsConfig()) == 110


def test_text_estimate_rounds_up() -> None:
    # ceil(1/4)=1; (1+100)*110/100 = 111.1 -> 112
    assert estimate_text_tokens(1, EstimationBudgetsConfig()) == 112


def test_item_estimate_rounds_down() -> None:
    assert estimate_item_tokens(1, EstimationBudgetsConfig()) == 111
    assert estimate_item_tokens(4000, EstimationBudgetsConfig()) == 1210
    assert estimate_item_tokens(0, EstimationBudgetsConfig()) == 110


def test_config_and_plugin_budgets_agree() -> None:
    for n in (0, 1, 3, 4, 5, 999, 4000):
        assert estimate_text_tokens(n, EstimationBudgets()) == estimate_text_tokens(
            n, EstimationBudgetsConfig()
        )
        assert estimate_item_tokens(n, EstimationBudgets()) == estimate_item_tokens(
            n, EstimationBudgetsConfig()
        )


def test_zero_bytes_per_token_from_a_plugin_does_not_divide_by_zero() -> None:
    budgets = EstimationBudgets(bytes_per_token_conservative=0, fixed_overhead_tokens=0, safety_margin_pct=0)
    assert estimate_text_tokens(7, budgets) == 7


def test_negative_bytes_rejected() -> None:
    with pytest.raises(ValueError):
        estimate_text_tokens(-1, EstimationBudgetsConfig())
    with pytest.raises(ValueError):
        estimate_item_tokens(-1, EstimationBudgetsConfig())


def test_utf8_len_counts_bytes() -> None:
    assert utf8_len("héllo") == 6
    assert utf8_len("") == 0
