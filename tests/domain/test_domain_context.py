"""Context assembly under the token budget and the thread-summary trigger (original-domain.md §5)."""

from __future__ import annotations

import datetime as dt

import pytest

from minichat_host.config import ContextConfig
from minichat_host.domain.context import (
    SUMMARY_PREAMBLE,
    AssembledContext,
    EnabledTools,
    HistoryMessage,
    SummaryInput,
    assemble_context,
    summary_due,
    summary_message_text,
)
from minichat_host.domain.errors import ContextBudgetExceeded
from minichat_host.plugins.types import EstimationBudgets, ModelCatalogEntry

CTX = ContextConfig(web_search_guard="WEB-GUARD", file_search_guard="FILE-GUARD", recent_messages_limit=10)
T0 = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)


def model(context_window: int = 10_000, system_prompt: str = "S" * 10, **budget: int) -> ModelCatalogEntry:
    """One token per byte and no overhead or margin unless overridden: an item costs its byte length."""
    budgets = dict(
        bytes_per_token_conservative=1,
        fixed_overhead_tokens=0,
        safety_margin_pct=0,
        image_token_budget=7,
        tool_surcharge_tokens=11,
        web_search_surcharge_tokens=13,
        code_interpreter_surcharge_tokens=17,
    )
    budgets.update(budget)
    return ModelCatalogEntry(
        id="m",
        provider_model_id="m",
        display_name="m",
        context_window=context_window,
        system_prompt=system_prompt,
        estimation_budgets=EstimationBudgets(**budgets),
    )


def msg(n: int, role: str, size: int) -> HistoryMessage:
    return HistoryMessage(id=f"id-{n}", role=role, content=chr(ord("a") + n) * size, created_at=T0)


def assemble(
    entry: ModelCatalogEntry,
    history: list[HistoryMessage] | None = None,
    *,
    summary: SummaryInput | None = None,
    tools: EnabledTools | None = None,
    current: str = "c" * 5,
    images: tuple[str, ...] = (),
    max_out: int = 100,
    context: ContextConfig = CTX,
) -> AssembledContext:
    return assemble_context(
        model=entry,
        max_output_tokens_applied=max_out,
        tools=tools or EnabledTools(),
        context=context,
        summary=summary,
        history=history or [],
        current_text=current,
        current_image_refs=images,
    )


def texts(result: AssembledContext) -> list[tuple[str, str, str]]:
    return [(m.kind, m.role, m.text) for m in result.messages]


def test_everything_fits_in_order() -> None:
    history = [msg(1, "user", 20), msg(2, "assistant", 30)]
    result = assemble(model(), history, summary=SummaryInput(text="sum", token_estimate=42))
    assert texts(result) == [
        ("summary", "user", f"{SUMMARY_PREAMBLE}\n\nsum"),
        ("history", "user", "b" * 20),
        ("history", "assistant", "c" * 30),
        ("current", "user", "c" * 5),
    ]
    assert result.messages[1].source_id == "id-1"
    assert result.instructions == "S" * 10
    assert result.summary_applied and result.summary_token_estimate == 42
    assert not result.messages_truncated
    assert result.available_tokens == 10_000 - 100
    summary_cost = len(summary_message_text("sum"))
    assert result.estimated_context_tokens == 10 + 5 + summary_cost + 20 + 30


def test_tool_guards_and_surcharges() -> None:
    result = assemble(model(), tools=EnabledTools(file_search=True, web_search=True, code_interpreter=True))
    assert result.instructions == "S" * 10 + "\n\nWEB-GUARD\n\nFILE-GUARD"
    assert result.available_tokens == 10_000 - 100 - 11 - 13 - 17
    only_file = assemble(model(system_prompt=""), tools=EnabledTools(file_search=True))
    assert only_file.instructions == "FILE-GUARD"
    assert only_file.available_tokens == 10_000 - 100 - 11


def test_no_instructions_when_nothing_to_say() -> None:
    result = assemble(model(system_prompt=""))
    assert result.instructions is None
    assert result.estimated_context_tokens == 5


def test_fixed_overhead_is_taken_from_the_budget() -> None:
    result = assemble(model(fixed_overhead_tokens=3))
    assert result.available_tokens == 10_000 - 100 - 3
    # Each item also pays the overhead: instructions 10+3, current 5+3.
    assert result.estimated_context_tokens == 13 + 8


def test_history_stops_at_the_first_message_that_does_not_fit() -> None:
    # available = 215 - 100 = 115; mandatory 15 leaves 100: the newest (10) fits, the 95 does not, and the
    # oldest (5) is not taken even though it would fit.
    history = [msg(1, "user", 5), msg(2, "assistant", 95), msg(3, "user", 10)]
    result = assemble(model(context_window=215), history)
    assert texts(result) == [("history", "user", "d" * 10), ("current", "user", "c" * 5)]
    assert result.messages_truncated
    assert result.estimated_context_tokens == 25


def test_exact_fit_is_kept() -> None:
    history = [msg(1, "user", 40), msg(2, "assistant", 60)]
    result = assemble(model(context_window=215), history)
    assert not result.messages_truncated
    assert result.estimated_context_tokens == result.available_tokens == 115


def test_summary_is_applied_only_whole_and_history_still_fills_the_rest() -> None:
    summary = SummaryInput(text="s" * 200, token_estimate=60)
    history = [msg(1, "user", 20), msg(2, "assistant", 30)]
    result = assemble(model(context_window=215), history, summary=summary)
    assert not result.summary_applied
    assert result.summary_token_estimate is None
    assert [m.kind for m in result.messages] == ["history", "history", "current"]
    assert not result.messages_truncated


def test_summary_is_preferred_over_history() -> None:
    summary = SummaryInput(text="s", token_estimate=1)
    summary_cost = len(summary_message_text("s"))
    entry = model(context_window=100 + 15 + summary_cost + 10)
    history = [msg(1, "user", 10), msg(2, "assistant", 11)]
    result = assemble(entry, history, summary=summary)
    assert result.summary_applied
    assert [m.kind for m in result.messages] == ["summary", "current"]
    assert result.messages_truncated


def test_system_rows_are_skipped_without_counting_as_truncation() -> None:
    history = [msg(1, "user", 10), msg(2, "system", 5000), msg(3, "assistant", 10)]
    result = assemble(model(context_window=200), history)
    assert [(m.role, m.text) for m in result.messages] == [
        ("user", "b" * 10),
        ("assistant", "d" * 10),
        ("user", "c" * 5),
    ]
    assert not result.messages_truncated


def test_only_the_recent_messages_limit_is_considered() -> None:
    history = [msg(i, "user" if i % 2 else "assistant", 1) for i in range(1, 8)]
    result = assemble(model(), history, context=ContextConfig(recent_messages_limit=3))
    assert [m.source_id for m in result.messages if m.kind == "history"] == ["id-5", "id-6", "id-7"]
    assert not result.messages_truncated
    none = assemble(model(), history, context=ContextConfig(recent_messages_limit=0))
    assert [m.kind for m in none.messages] == ["current"]


def test_images_are_mandatory_and_passed_through() -> None:
    result = assemble(model(), images=("file-1", "file-2"))
    assert result.messages[-1].image_refs == ("file-1", "file-2")
    assert result.estimated_context_tokens == 10 + 5 + 2 * 7
    with pytest.raises(ContextBudgetExceeded):
        assemble(model(context_window=100 + 15 + 14 - 1), images=("a", "b"))


def test_mandatory_part_must_fit() -> None:
    assert assemble(model(context_window=115)).estimated_context_tokens == 15
    with pytest.raises(ContextBudgetExceeded) as info:
        assemble(model(context_window=114))
    assert (info.value.status, info.value.code) == (422, "context_budget_exceeded")


@pytest.mark.parametrize(
    ("window", "max_out", "tools"),
    [
        (100, 100, EnabledTools()),
        (100, 5000, EnabledTools()),
        (130, 100, EnabledTools(file_search=True, web_search=True, code_interpreter=True)),
    ],
)
def test_no_room_at_all_is_context_budget_exceeded(window: int, max_out: int, tools: EnabledTools) -> None:
    with pytest.raises(ContextBudgetExceeded):
        assemble(model(context_window=window), max_out=max_out, tools=tools)


def test_default_budgets_item_costs() -> None:
    entry = ModelCatalogEntry(id="m", provider_model_id="m", display_name="m", context_window=128_000)
    result = assemble(entry, [msg(1, "user", 4000)], current="x", max_out=4096)
    # system prompt "" -> no instructions; 4000 bytes -> 1210; 1 byte -> floor(101 * 1.1) = 111
    assert result.instructions is None
    assert result.estimated_context_tokens == 1210 + 111
    assert result.available_tokens == 128_000 - 4096 - 100


def test_assembly_is_deterministic() -> None:
    history = [msg(i, "user" if i % 2 else "assistant", 7 * i) for i in range(1, 10)]
    entry = model(context_window=250)
    assert assemble(entry, history) == assemble(entry, history)


# --- summary trigger ---------------------------------------------------------------------------------
def due(truncated: bool = False, has_summary: bool = False, tokens: int = 0) -> bool:
    return summary_due(
        messages_truncated=truncated,
        has_summary=has_summary,
        assembled_tokens=tokens,
        context_window=1000,
        max_output_applied=100,
        compression_threshold_pct=80,
    )


def test_truncation_always_triggers() -> None:
    assert due(truncated=True)
    assert due(truncated=True, has_summary=True)


def test_threshold_triggers_only_without_a_summary() -> None:
    # (1000 - 100) * 80 % = 720
    assert due(tokens=720)
    assert not due(tokens=719)
    assert not due(tokens=900, has_summary=True)


def test_threshold_is_compared_exactly() -> None:
    # (1001 - 100) * 80 % = 720.8: 720 is below it, 721 reaches it.
    def at(tokens: int) -> bool:
        return summary_due(
            messages_truncated=False,
            has_summary=False,
            assembled_tokens=tokens,
            context_window=1001,
            max_output_applied=100,
            compression_threshold_pct=80,
        )

    assert not at(720)
    assert at(721)
