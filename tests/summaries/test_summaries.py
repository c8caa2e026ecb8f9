"""Thread summaries: the trigger, and the queue handler's frontier compare-and-set, compressed range and
system usage event (original-domain.md §5), with the offline `local` provider's deterministic summary."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from attachments.harness import DEV_TENANT, create_chat, open_client, seed_message

from minichat_host import constants
from minichat_host.config import ThreadSummaryConfig
from minichat_host.db.repos import summaries as repo
from minichat_host.db.repos.summaries import Frontier
from minichat_host.db.tables import messages, thread_summaries
from minichat_host.domain.summaries import (
    ThreadSummaryHandler,
    ThreadSummaryTaskPayload,
    extract_summary,
    summary_task_if_due,
)
from minichat_host.outbox.models import Delivery
from minichat_host.plugins.errors import PermanentError, TransientError
from minichat_host.plugins.types import UsageEvent
from minichat_host.providers.base import CompletionResult, ProviderError, ProviderRequest, Usage
from summaries.conftest import SummaryStack

T0 = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
CONVERSATION = [
    ("user", "My name is Ada. I like graphs."),
    ("assistant", "Nice to meet you, Ada. Graphs are great."),
    ("user", "We chose PostgreSQL for the store. It scales."),
    ("assistant", "PostgreSQL is a solid choice. Anything else?"),
    ("user", "The launch is on March 3. Please remember it."),
    ("assistant", "Noted: launch on March 3."),
]


async def new_chat(ss: SummaryStack) -> uuid.UUID:
    async with open_client(ss.stack) as client:
        return uuid.UUID(await create_chat(client))


async def seed_conversation(ss: SummaryStack, chat_id: uuid.UUID, count: int = 6) -> list[Frontier]:
    positions = []
    for index, (role, content) in enumerate(CONVERSATION[:count]):
        created = T0 + dt.timedelta(seconds=index)
        message_id = await seed_message(
            ss.stack.database, chat_id, role=role, content=content, created_at=created
        )
        positions.append(Frontier(created, message_id))
    return positions


def task(
    chat_id: uuid.UUID, target: Frontier, base: Frontier | None = None, **overrides: Any
) -> ThreadSummaryTaskPayload:
    values: dict[str, Any] = {
        "tenant_id": DEV_TENANT,
        "chat_id": chat_id,
        "system_request_id": uuid.uuid4(),
        "system_task_type": "thread_summary_update",
        "frozen_target_created_at": target.created_at,
        "frozen_target_message_id": target.message_id,
        "base_frontier_created_at": base.created_at if base else None,
        "base_frontier_message_id": base.message_id if base else None,
    }
    values.update(overrides)
    return ThreadSummaryTaskPayload(**values)


def delivery(payload: Any) -> Delivery:
    return Delivery(
        queue=constants.QUEUE_THREAD_SUMMARY,
        partition=0,
        seq=1,
        payload=payload if isinstance(payload, bytes) else msgspec.json.encode(payload),
        payload_type=constants.PAYLOAD_TYPE_JSON,
        attempts=0,
        created_at=dt.datetime.now(dt.UTC),
    )


async def compressed_ids(ss: SummaryStack, chat_id: uuid.UUID) -> set[uuid.UUID]:
    rows = await ss.stack.database.fetch_all(
        sa.select(messages.c.id).where(messages.c.chat_id == chat_id, messages.c.is_compressed.is_(True))
    )
    return {uuid.UUID(str(r[0])) for r in rows}


async def test_trigger_enqueues_and_the_worker_summarizes(summary_stack: SummaryStack) -> None:
    ss = summary_stack
    chat_id = await new_chat(ss)
    positions = await seed_conversation(ss, chat_id, 4)
    config = ss.stack.config.thread_summary
    async with ss.stack.outbox.transaction() as tx:
        not_due = await summary_task_if_due(
            tx,
            ss.stack.database,
            tenant_id=DEV_TENANT,
            chat_id=chat_id,
            messages_truncated=False,
            assembled_tokens=10,
            context_window=1000,
            max_output_applied=100,
            config=config,
        )
        queued = await summary_task_if_due(
            tx,
            ss.stack.database,
            tenant_id=DEV_TENANT,
            chat_id=chat_id,
            messages_truncated=False,
            assembled_tokens=720,  # 80 % of (1000 - 100)
            context_window=1000,
            max_output_applied=100,
            config=config,
        )
    assert not_due is None
    assert queued is not None and queued.base_frontier_message_id is None
    assert (queued.frozen_target_message_id, queued.frozen_target_created_at) == (
        positions[-1].message_id,
        positions[-1].created_at,
    )
    await ss.stack.drain()
    summary = await repo.get_summary(ss.stack.database, chat_id)
    assert summary is not None and summary.frontier == positions[-1]
    assert "My name is Ada." in summary.summary_text and "<summary>" not in summary.summary_text
    assert summary.token_estimate > 0
    assert await compressed_ids(ss, chat_id) == {p.message_id for p in positions}
    (usage_delivery,) = ss.usage
    event = msgspec.json.decode(usage_delivery.payload, type=UsageEvent)
    assert event.requester_type == "system" and event.user_id is None and event.turn_id is None
    assert event.billing_outcome == "system_task" and event.settlement_method == "none"
    assert event.actual_credits_micro == 0 and event.policy_version_applied == 0
    assert event.request_id == str(queued.system_request_id)
    assert event.system_task_type == "thread_summary_update"
    assert event.dedupe_key == f"{DEV_TENANT.hex}/thread_summary_update/{queued.system_request_id.hex}"
    assert event.usage is not None and event.usage.output_tokens > 0

    # With the frontier at the newest message there is nothing to summarize: no task.
    async with ss.stack.outbox.transaction() as tx:
        again = await summary_task_if_due(
            tx,
            ss.stack.database,
            tenant_id=DEV_TENANT,
            chat_id=chat_id,
            messages_truncated=True,
            assembled_tokens=0,
            context_window=1000,
            max_output_applied=100,
            config=config,
        )
    assert again is None


async def test_trigger_is_off_when_disabled(summary_stack: SummaryStack) -> None:
    ss = summary_stack
    chat_id = await new_chat(ss)
    await seed_conversation(ss, chat_id, 2)
    async with ss.stack.outbox.transaction() as tx:
        result = await summary_task_if_due(
            tx,
            ss.stack.database,
            tenant_id=DEV_TENANT,
            chat_id=chat_id,
            messages_truncated=True,
            assembled_tokens=0,
            context_window=1000,
            max_output_applied=100,
            config=ThreadSummaryConfig(enabled=False),
        )
    assert result is None


async def test_only_base_to_target_is_compressed_and_merged(summary_stack: SummaryStack) -> None:
    ss = summary_stack
    chat_id = await new_chat(ss)
    positions = await seed_conversation(ss, chat_id, 6)
    base, target = positions[1], positions[4]
    assert await repo.insert_first_summary(
        ss.stack.database,
        tenant_id=DEV_TENANT,
        chat_id=chat_id,
        text="Earlier: the user is Ada.",
        frontier=base,
        token_estimate=5,
        now=T0,
    )
    await ss.handler(delivery(task(chat_id, target, base)))
    assert await compressed_ids(ss, chat_id) == {p.message_id for p in positions[2:5]}
    summary = await repo.get_summary(ss.stack.database, chat_id)
    assert summary is not None and summary.frontier == target
    assert summary.summary_text.startswith("Earlier: the user is Ada.")
    assert "We chose PostgreSQL for the store." in summary.summary_text
    assert "Noted" not in summary.summary_text  # after the target


async def test_cas_conflict_skips(summary_stack: SummaryStack) -> None:
    ss = summary_stack
    chat_id = await new_chat(ss)
    positions = await seed_conversation(ss, chat_id, 4)
    assert await repo.insert_first_summary(
        ss.stack.database,
        tenant_id=DEV_TENANT,
        chat_id=chat_id,
        text="Newer summary.",
        frontier=positions[2],
        token_estimate=3,
        now=T0,
    )
    before = ss.stack.counter("minichat_thread_summary_total", {"outcome": "cas_conflict"})
    # Queued when there was no summary (base None), or from an older frontier: another task won.
    await ss.handler(delivery(task(chat_id, positions[3])))
    await ss.handler(delivery(task(chat_id, positions[3], positions[0])))
    summary = await repo.get_summary(ss.stack.database, chat_id)
    assert (
        summary is not None and summary.summary_text == "Newer summary." and summary.frontier == positions[2]
    )
    assert await compressed_ids(ss, chat_id) == set()
    assert ss.stack.counter("minichat_thread_summary_total", {"outcome": "cas_conflict"}) == before + 2
    await ss.stack.drain()
    assert ss.usage == []


async def test_cas_lost_at_commit_changes_nothing(summary_stack: SummaryStack) -> None:
    ss = summary_stack
    chat_id = await new_chat(ss)
    positions = await seed_conversation(ss, chat_id, 4)

    class RacingProvider:
        async def complete(self, request: ProviderRequest, *, tenant_id: str) -> CompletionResult:
            # Another task commits its first summary while this one is talking to the model.
            await repo.insert_first_summary(
                ss.stack.database,
                tenant_id=DEV_TENANT,
                chat_id=chat_id,
                text="Winner.",
                frontier=positions[1],
                token_estimate=1,
                now=T0,
            )
            return CompletionResult(text="<summary>Loser.</summary>", usage=Usage(output_tokens=2))

    handler = handler_with(ss, RacingProvider())
    await handler(delivery(task(chat_id, positions[3])))
    summary = await repo.get_summary(ss.stack.database, chat_id)
    assert summary is not None and summary.summary_text == "Winner."
    assert await compressed_ids(ss, chat_id) == set()
    await ss.stack.drain()
    assert ss.usage == []


async def test_half_frontier_is_rejected(summary_stack: SummaryStack) -> None:
    ss = summary_stack
    chat_id = await new_chat(ss)
    positions = await seed_conversation(ss, chat_id, 2)
    half = task(chat_id, positions[1], base_frontier_created_at=T0)
    with pytest.raises(PermanentError, match="half-set"):
        await ss.handler(delivery(half))
    with pytest.raises(PermanentError):
        await ss.handler(delivery(b'{"tenant_id": "x"}'))
    async with ss.stack.outbox.transaction() as tx:
        await tx.enqueue(constants.QUEUE_THREAD_SUMMARY, chat_id, half)
    await ss.stack.drain()
    (letter,) = await ss.stack.outbox.dead_letters.list()
    assert "half-set" in letter.last_error


async def test_nothing_in_range_is_a_no_op(summary_stack: SummaryStack) -> None:
    ss = summary_stack
    chat_id = await new_chat(ss)
    positions = await seed_conversation(ss, chat_id, 2)
    await ss.stack.database.execute(
        messages.update().where(messages.c.chat_id == chat_id).values(deleted_at=T0 + dt.timedelta(hours=1))
    )
    await ss.handler(delivery(task(chat_id, positions[1])))
    assert await repo.get_summary(ss.stack.database, chat_id) is None


class FailingProvider:
    def __init__(self, errors: list[ProviderError]) -> None:
        self.errors = errors
        self.requests: list[ProviderRequest] = []

    async def complete(self, request: ProviderRequest, *, tenant_id: str) -> CompletionResult:
        self.requests.append(request)
        if self.errors:
            raise self.errors.pop(0)
        return CompletionResult(text="<analysis>x</analysis><summary> Short. </summary>", usage=Usage())


def handler_with(ss: SummaryStack, provider: Any) -> ThreadSummaryHandler:
    class Providers:
        def get(self, provider_id: str) -> Any:
            return provider

    from minichat_host.domain.catalog import CatalogService

    return ThreadSummaryHandler(
        ss.stack.database,
        ss.stack.outbox,
        catalog=CatalogService(ss.stack.plugins),
        providers=Providers(),
        config=ss.stack.config.thread_summary,
        clock=ss.stack.clock,
    )


async def test_provider_errors_retry_and_keep_the_old_summary(summary_stack: SummaryStack) -> None:
    ss = summary_stack
    chat_id = await new_chat(ss)
    positions = await seed_conversation(ss, chat_id, 4)
    handler = handler_with(ss, FailingProvider([ProviderError("provider_error", "upstream 500")]))
    with pytest.raises(TransientError, match="upstream 500"):
        await handler(delivery(task(chat_id, positions[3])))
    assert await repo.get_summary(ss.stack.database, chat_id) is None

    class Empty:
        async def complete(self, request: ProviderRequest, *, tenant_id: str) -> CompletionResult:
            return CompletionResult(text="<summary>  </summary>", usage=Usage())

    with pytest.raises(TransientError, match="empty"):
        await handler_with(ss, Empty())(delivery(task(chat_id, positions[3])))
    assert await compressed_ids(ss, chat_id) == set()


async def test_context_length_errors_drop_the_oldest_lines(summary_stack: SummaryStack) -> None:
    ss = summary_stack
    chat_id = await new_chat(ss)
    positions = await seed_conversation(ss, chat_id, 6)
    overflow = ProviderError("context_length_exceeded", "too long")
    provider = FailingProvider([overflow, overflow])
    await handler_with(ss, provider)(delivery(task(chat_id, positions[5])))
    counts = [
        req.input[0].text().count("\nUser: ") + req.input[0].text().count("\nAssistant: ")
        for req in provider.requests
    ]
    assert counts == [6, 4, 2]
    summary = await repo.get_summary(ss.stack.database, chat_id)
    assert summary is not None and summary.summary_text == "Short."
    # The whole frozen range counts as summarized.
    assert await compressed_ids(ss, chat_id) == {p.message_id for p in positions}

    still = FailingProvider([overflow, overflow, overflow])
    chat2 = await new_chat(ss)
    positions2 = await seed_conversation(ss, chat2, 6)
    with pytest.raises(TransientError, match="context_length_exceeded"):
        await handler_with(ss, still)(delivery(task(chat2, positions2[5])))


def test_extract_summary() -> None:
    assert extract_summary("<analysis>a</analysis>\n<SUMMARY>\n kept \n</SUMMARY>") == "kept"
    assert extract_summary("  plain reply  ") == "plain reply"


async def test_summary_rows_are_per_chat(summary_stack: SummaryStack) -> None:
    ss = summary_stack
    chat_id = await new_chat(ss)
    positions = await seed_conversation(ss, chat_id, 2)
    first = await repo.insert_first_summary(
        ss.stack.database,
        tenant_id=DEV_TENANT,
        chat_id=chat_id,
        text="a",
        frontier=positions[0],
        token_estimate=1,
        now=T0,
    )
    second = await repo.insert_first_summary(
        ss.stack.database,
        tenant_id=DEV_TENANT,
        chat_id=chat_id,
        text="b",
        frontier=positions[1],
        token_estimate=1,
        now=T0,
    )
    assert (first, second) == (True, False)
    count = await ss.stack.database.fetch_val(sa.select(sa.func.count()).select_from(thread_summaries))
    assert count == 1


def test_the_task_payload_carries_the_original_wire_fields() -> None:
    """The queue payload keeps the original's field names, `system_task_type` included (never omitted)."""
    target = Frontier(created_at=T0, message_id=uuid.uuid4())
    encoded = msgspec.json.decode(msgspec.json.encode(task(uuid.uuid4(), target)))
    assert encoded["system_task_type"] == "thread_summary_update"
    assert {
        "tenant_id",
        "chat_id",
        "system_request_id",
        "frozen_target_created_at",
        "frozen_target_message_id",
    } <= set(encoded)
