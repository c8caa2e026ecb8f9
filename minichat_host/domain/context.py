"""Context assembly under a token budget, and the thread-summary trigger (original-domain.md §5).

Pure: the repository supplies the history rows (live, `request_id` set, not compressed, within the
snapshot boundary, after the summary frontier, newest `recent_messages_limit`, oldest first) and the
summary; the chat core turns the result into a provider request.

Budget: `available = context_window - max_output_applied - enabled tool surcharges - fixed_overhead`
(≤ 0 is an error). Each item costs `estimate_item_tokens(utf8 bytes)` under the model's own budgets.
The mandatory part (instructions + current message + images * image budget) must fit, else
`ContextBudgetExceeded`. Then the summary (with its preamble) only if it fits whole; then history from
newest to oldest while each message fits, stopping at the first that does not. System rows are skipped
(never sent, never counted as truncation).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from minichat_host.config import ContextConfig
from minichat_host.domain.credits import estimate_item_tokens, utf8_len
from minichat_host.domain.errors import ContextBudgetExceeded
from minichat_host.plugins.types import ModelCatalogEntry

SUMMARY_PREAMBLE: Final = (
    "This conversation has earlier messages that have been summarized. The summary below covers the "
    "earlier portion of the conversation. Recent messages follow after."
)

ContextRole = Literal["user", "assistant"]
ContextMessageKind = Literal["summary", "history", "current"]


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    """One stored message offered to the context (role `user`, `assistant` or `system`)."""

    id: uuid.UUID | str
    role: str
    content: str
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SummaryInput:
    """The chat's thread summary: its text and the token estimate stored with it."""

    text: str
    token_estimate: int


@dataclass(frozen=True, slots=True)
class EnabledTools:
    """Tools the request will offer the model; each one costs its surcharge from the budget."""

    file_search: bool = False
    web_search: bool = False
    code_interpreter: bool = False


@dataclass(frozen=True, slots=True)
class ContextMessage:
    """One input message for the provider. `image_refs` (current message only) pass through untouched."""

    role: ContextRole
    text: str
    kind: ContextMessageKind
    image_refs: tuple[str, ...] = ()
    source_id: uuid.UUID | str | None = None


@dataclass(frozen=True, slots=True)
class AssembledContext:
    """The provider input in order: [summary preamble message], kept history, current message."""

    instructions: str | None
    messages: tuple[ContextMessage, ...]
    estimated_context_tokens: int
    available_tokens: int
    messages_truncated: bool
    summary_applied: bool
    summary_token_estimate: int | None


def system_instructions(model: ModelCatalogEntry, tools: EnabledTools, context: ContextConfig) -> str | None:
    """The model's system prompt plus the web/file search guards of enabled tools, or None when empty."""
    parts = [
        model.system_prompt,
        context.web_search_guard if tools.web_search else "",
        context.file_search_guard if tools.file_search else "",
    ]
    joined = "\n\n".join(part for part in parts if part)
    return joined or None


def summary_message_text(summary_text: str) -> str:
    """The summary as sent: the preamble, a blank line, then the summary."""
    return f"{SUMMARY_PREAMBLE}\n\n{summary_text}"


def assemble_context(
    *,
    model: ModelCatalogEntry,
    max_output_tokens_applied: int,
    tools: EnabledTools,
    context: ContextConfig,
    summary: SummaryInput | None,
    history: Sequence[HistoryMessage],
    current_text: str,
    current_image_refs: Sequence[str] = (),
) -> AssembledContext:
    """Assemble the context of one turn (see the module doc for the budget rules).

    `history` is oldest first; only its newest `context.recent_messages_limit` rows are considered.
    Raises `ContextBudgetExceeded` when the budget is not positive or the mandatory part exceeds it.
    """
    budgets = model.estimation_budgets
    surcharges = (
        (budgets.tool_surcharge_tokens if tools.file_search else 0)
        + (budgets.web_search_surcharge_tokens if tools.web_search else 0)
        + (budgets.code_interpreter_surcharge_tokens if tools.code_interpreter else 0)
    )
    available = model.context_window - max_output_tokens_applied - surcharges - budgets.fixed_overhead_tokens
    if available <= 0:
        raise ContextBudgetExceeded(
            f"Model {model.id} leaves no room for input: context window {model.context_window}, "
            f"{max_output_tokens_applied} output tokens, {surcharges} tool and "
            f"{budgets.fixed_overhead_tokens} overhead tokens."
        )

    def cost(text: str) -> int:
        return estimate_item_tokens(utf8_len(text), budgets)

    instructions = system_instructions(model, tools, context)
    mandatory = (
        (cost(instructions) if instructions is not None else 0)
        + cost(current_text)
        + len(current_image_refs) * budgets.image_token_budget
    )
    if mandatory > available:
        raise ContextBudgetExceeded(
            f"The message needs an estimated {mandatory} tokens with instructions and images; "
            f"model {model.id} has room for {available}."
        )
    remaining = available - mandatory

    messages: list[ContextMessage] = []
    summary_applied = False
    if summary is not None:
        text = summary_message_text(summary.text)
        summary_cost = cost(text)
        if summary_cost <= remaining:
            remaining -= summary_cost
            summary_applied = True
            messages.append(ContextMessage(role="user", text=text, kind="summary"))

    limit = context.recent_messages_limit
    recent = list(history[-limit:]) if limit > 0 else []
    kept: list[ContextMessage] = []
    truncated = False
    for row in reversed(recent):
        if row.role not in ("user", "assistant"):
            continue
        row_cost = cost(row.content)
        if row_cost > remaining:
            # The first miss ends the walk: older rows would leave a gap in the conversation.
            truncated = True
            break
        remaining -= row_cost
        role: ContextRole = "user" if row.role == "user" else "assistant"
        kept.append(ContextMessage(role=role, text=row.content, kind="history", source_id=row.id))
    messages.extend(reversed(kept))
    messages.append(
        ContextMessage(role="user", text=current_text, kind="current", image_refs=tuple(current_image_refs))
    )
    return AssembledContext(
        instructions=instructions,
        messages=tuple(messages),
        estimated_context_tokens=available - remaining,
        available_tokens=available,
        messages_truncated=truncated,
        summary_applied=summary_applied,
        summary_token_estimate=summary.token_estimate if summary_applied and summary is not None else None,
    )


def summary_due(
    *,
    messages_truncated: bool,
    has_summary: bool,
    assembled_tokens: int,
    context_window: int,
    max_output_applied: int,
    compression_threshold_pct: int,
) -> bool:
    """Whether a completed turn should enqueue a thread-summary task.

    True when assembly dropped history, or when no summary exists yet and the assembled context reached
    `compression_threshold_pct` % of `context_window - max_output_applied` (integer comparison).
    """
    if messages_truncated:
        return True
    if has_summary:
        return False
    return assembled_tokens * 100 >= (context_window - max_output_applied) * compression_threshold_pct
