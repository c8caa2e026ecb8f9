"""Integer credit and token arithmetic (original-domain.md §3 "Units", §5 item cost).

1 credit = 1_000_000 credits_micro. Money is never a float: every formula here is integer-only.
"""

from __future__ import annotations

from typing import Final

from minichat_host.domain.models import EstimationBudgetsLike

MICRO_PER_CREDIT: Final = 1_000_000
MAX_TOKENS: Final = 10_000_000
MAX_MULTIPLIER_MICRO: Final = 10_000_000_000


class CreditBoundsError(ValueError):
    """A token count or multiplier outside the bounds the BIGINT quota columns were sized for."""


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def credits_micro(input_tokens: int, output_tokens: int, in_mult_micro: int, out_mult_micro: int) -> int:
    """`ceil(in*in_mult/1e6) + ceil(out*out_mult/1e6)`, rounding each component up on its own.

    Tokens must be in `0..=10_000_000` and multipliers in `0..=10_000_000_000` (a zero multiplier is a
    free model); anything else raises `CreditBoundsError`.
    """
    for name, tokens in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
        if not 0 <= tokens <= MAX_TOKENS:
            raise CreditBoundsError(f"{name}={tokens} is outside 0..={MAX_TOKENS}")
    for name, mult in (("input multiplier", in_mult_micro), ("output multiplier", out_mult_micro)):
        if not 0 <= mult <= MAX_MULTIPLIER_MICRO:
            raise CreditBoundsError(f"{name}={mult} is outside 0..={MAX_MULTIPLIER_MICRO}")
    return _ceil_div(input_tokens * in_mult_micro, MICRO_PER_CREDIT) + _ceil_div(
        output_tokens * out_mult_micro, MICRO_PER_CREDIT
    )


def _bytes_per_token(budgets: EstimationBudgetsLike) -> int:
    # Config validation rejects 0, but a policy plugin's per-model budgets may not; never divide by it.
    return max(1, budgets.bytes_per_token_conservative)


def estimate_text_tokens(utf8_bytes: int, budgets: EstimationBudgetsLike) -> int:
    """Reserve-side text estimate: `ceil(base * (100 + margin) / 100)`.

    `base` is the fixed overhead for an empty text, else `ceil(bytes / bytes_per_token) + overhead`.
    With the default budgets 4000 bytes give 1210 tokens.
    """
    if utf8_bytes < 0:
        raise ValueError("utf8_bytes must not be negative")
    overhead = budgets.fixed_overhead_tokens
    base = overhead if utf8_bytes == 0 else _ceil_div(utf8_bytes, _bytes_per_token(budgets)) + overhead
    return _ceil_div(base * (100 + budgets.safety_margin_pct), 100)


def estimate_item_tokens(utf8_bytes: int, budgets: EstimationBudgetsLike) -> int:
    """Context-assembly cost of one item: `floor((ceil(bytes / bpt) + overhead) * (100 + margin) / 100)`."""
    if utf8_bytes < 0:
        raise ValueError("utf8_bytes must not be negative")
    base = _ceil_div(utf8_bytes, _bytes_per_token(budgets)) + budgets.fixed_overhead_tokens
    return base * (100 + budgets.safety_margin_pct) // 100


def utf8_len(text: str) -> int:
    """Byte length of `text` in UTF-8, the unit every estimate counts."""
    return len(text.encode("utf-8"))
