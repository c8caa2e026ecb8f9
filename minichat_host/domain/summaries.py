"""Thread summaries: the trigger that finalization calls, and the `thread_summary` queue handler
(original-domain.md §5, original-outbox-and-plugins.md §2).

Trigger (completed turns, `thread_summary.enabled`): context assembly dropped history, or no summary exists
yet and the assembled context reached `compression_threshold_pct` % of `context_window - max_output`.
The task freezes its range: from the chat's current frontier (the base, possibly none) to the newest live
message (the target, which includes the new assistant reply); nothing is enqueued when they are equal.

Handler: a half-set base frontier → dead letter; the stored frontier is no longer the base → skip (another
task won: compare-and-set conflict); no live, uncompressed message in `(base, target]` → skip. Otherwise
the summary model (`thread_summary.summary_model_id`, else the chat's own model) summarizes the earlier
summary plus the range as "Role: content" lines (each cut to `message_content_limit`); a context-length
error drops the oldest fifth of the lines (at least 2, keeping 2) at most twice. Only the text inside
`<summary>` is kept (the whole reply when it has no such block); an empty summary → retry. One
transaction then compare-and-sets the summary on the base frontier, marks `(base, target]` compressed
and enqueues a system `UsageEvent` with dedupe key `{tenant_hex}/thread_summary_update/{sysreq_hex}`.
Any provider or database error → retry, and the old summary stays. With the `local` provider the
summary is its deterministic extract, so this works offline.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import re
import uuid
import weakref
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

import msgspec
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from minichat_host import constants
from minichat_host.config import Config, ThreadSummaryConfig
from minichat_host.db.repos import attachments as attachments_repo
from minichat_host.db.repos import summaries as repo
from minichat_host.db.repos.common import Executor
from minichat_host.db.repos.summaries import Frontier, RangeMessage
from minichat_host.domain.context import summary_due
from minichat_host.domain.texts import rfc3339
from minichat_host.outbox.models import Delivery
from minichat_host.outbox.routing import queue_timing
from minichat_host.plugins.errors import PermanentError, TransientError
from minichat_host.plugins.types import ModelCatalogEntry, Usage, UsageEvent
from minichat_host.providers.base import InputMessage, InputText, LlmProvider, ProviderError, ProviderRequest

log = logging.getLogger("minichat.summaries")

Clock = Callable[[], dt.datetime]
SYSTEM_TASK_TYPE: Final = "thread_summary_update"
MAX_SUMMARY_OUTPUT_TOKENS: Final = 2048
MAX_CONTEXT_RETRIES: Final = 2
MIN_KEPT_LINES: Final = 2
_SUMMARY_BLOCK: Final = re.compile(r"<summary>(.*?)</summary>", re.DOTALL | re.IGNORECASE)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ThreadSummaryTaskPayload(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Payload of the `thread_summary` queue; `system_request_id` stays the same across retries."""

    tenant_id: uuid.UUID
    chat_id: uuid.UUID
    system_request_id: uuid.UUID
    frozen_target_created_at: dt.datetime
    frozen_target_message_id: uuid.UUID
    system_task_type: str  # no default: always on the wire, as in the original payload
    base_frontier_created_at: dt.datetime | None = None
    base_frontier_message_id: uuid.UUID | None = None


def dedupe_key(tenant_id: uuid.UUID, system_request_id: uuid.UUID) -> str:
    return f"{tenant_id.hex}/{SYSTEM_TASK_TYPE}/{system_request_id.hex}"


# --- the trigger --------------------------------------------------------------------------------------
class OutboxTransactionPort(Protocol):
    async def enqueue(self, queue: str, key: uuid.UUID | str | int, payload: Any) -> Any: ...


async def summary_task_if_due(
    tx: OutboxTransactionPort,
    db: Executor,
    *,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    messages_truncated: bool,
    assembled_tokens: int,
    context_window: int,
    max_output_applied: int,
    config: ThreadSummaryConfig,
) -> ThreadSummaryTaskPayload | None:
    """Enqueue a thread-summary task when one is due (call inside the finalization transaction of a
    completed turn, after the assistant message is written); returns what was enqueued, or None."""
    if not config.enabled:
        return None
    due = functools.partial(
        summary_due,
        messages_truncated=messages_truncated,
        assembled_tokens=assembled_tokens,
        context_window=context_window,
        max_output_applied=max_output_applied,
        compression_threshold_pct=config.compression_threshold_pct,
    )
    # An existing summary only ever makes a task less due: most turns are settled without reading it.
    if not due(has_summary=False):
        return None
    current = await repo.get_summary(db, chat_id)
    if not due(has_summary=current is not None):
        return None
    target = await repo.newest_live_message(db, chat_id)
    base = current.frontier if current is not None else None
    if target is None or target == base:
        return None
    task = ThreadSummaryTaskPayload(
        tenant_id=tenant_id,
        chat_id=chat_id,
        system_request_id=uuid.uuid4(),
        system_task_type=SYSTEM_TASK_TYPE,
        frozen_target_created_at=target.created_at,
        frozen_target_message_id=target.message_id,
        base_frontier_created_at=base.created_at if base is not None else None,
        base_frontier_message_id=base.message_id if base is not None else None,
    )
    await tx.enqueue(constants.QUEUE_THREAD_SUMMARY, chat_id, task)
    return task


# --- the handler --------------------------------------------------------------------------------------
class CatalogPort(Protocol):
    async def current_policy(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> Any: ...


class ProvidersPort(Protocol):
    """`ProviderRegistry.get` (providers/base.py)."""

    def get(self, provider_id: str) -> LlmProvider: ...


class OutboxPort(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[OutboxTransactionPort]: ...


class SummaryMetrics:
    """`minichat_thread_summary{outcome}`: applied, cas_conflict, nothing_to_do, retry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "minichat_thread_summary",
            "Thread-summary task outcomes: applied, cas_conflict, nothing_to_do, retry",
            ["outcome"],
            registry=registry,
        )

    def count(self, outcome: str) -> None:
        self.outcomes.labels(outcome).inc()


_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, SummaryMetrics] = (
    weakref.WeakKeyDictionary()
)


def metrics_for(registry: CollectorRegistry | None = None) -> SummaryMetrics:
    """The summary metrics on `registry` (default: the process-wide one), created once per registry."""
    target = REGISTRY if registry is None else registry
    metrics = _metrics_by_registry.get(target)
    if metrics is None:
        metrics = _metrics_by_registry[target] = SummaryMetrics(target)
    return metrics


def summary_input(previous: str | None, lines: list[str]) -> str:
    """The user turn of the summary request: the earlier summary (to merge) and the new lines."""
    parts: list[str] = []
    if previous:
        parts.append(
            "The conversation so far was summarized as follows; merge the new messages into it.\n"
            f"<summary>{previous}</summary>"
        )
    parts.append("New messages:\n" + "\n".join(lines))
    parts.append(
        "Analyse the messages, then write one updated summary of the whole conversation that keeps facts, "
        "decisions, names, numbers and open questions."
    )
    return "\n\n".join(parts)


def message_line(message: RangeMessage, limit: int) -> str:
    content = message.content if len(message.content) <= limit else message.content[:limit] + "..."
    return f"{message.role.capitalize()}: {content}"


def extract_summary(text: str) -> str:
    """The text inside `<summary>…</summary>` when present, else the whole reply; stripped."""
    match = _SUMMARY_BLOCK.search(text)
    return (match.group(1) if match else text).strip()


def _find_model(snapshot: Any, model_id: str) -> ModelCatalogEntry | None:
    for entry in snapshot.model_catalog:
        if entry.id == model_id:
            found: ModelCatalogEntry = entry
            return found
    return None


class ThreadSummaryHandler:
    """The `thread_summary` queue handler of one app."""

    def __init__(
        self,
        database: Any,
        outbox: OutboxPort,
        *,
        catalog: CatalogPort,
        providers: ProvidersPort,
        config: ThreadSummaryConfig,
        metrics: SummaryMetrics | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._db = database
        self._outbox = outbox
        self._catalog = catalog
        self._providers = providers
        self._config = config
        self._metrics = metrics or metrics_for()
        self._clock = clock

    async def __call__(self, delivery: Delivery) -> None:
        task = delivery.decode(ThreadSummaryTaskPayload)
        if (task.base_frontier_created_at is None) != (task.base_frontier_message_id is None):
            raise PermanentError(
                "half-set base frontier: created_at and message_id must both be set or unset"
            )
        base = (
            Frontier(task.base_frontier_created_at, task.base_frontier_message_id)
            if task.base_frontier_created_at is not None and task.base_frontier_message_id is not None
            else None
        )
        target = Frontier(task.frozen_target_created_at, task.frozen_target_message_id)
        current = await repo.get_summary(self._db, task.chat_id)
        if (current.frontier if current is not None else None) != base:
            self._metrics.count("cas_conflict")
            log.info("chat %s: summary frontier moved since the task was queued; skipping", task.chat_id)
            return
        chat = await attachments_repo.chat_by_id(self._db, task.chat_id)
        if chat is None or chat.deleted_at is not None:
            self._metrics.count("nothing_to_do")
            return
        messages = await repo.messages_in_range(self._db, task.chat_id, base, target)
        if not messages:
            self._metrics.count("nothing_to_do")
            return
        try:
            model = await self._model(
                chat.tenant_id, chat.user_id, self._config.summary_model_id or chat.model
            )
            text, usage = await self._summarize(
                model, task, current.summary_text if current is not None else None, messages
            )
        except TransientError:
            self._metrics.count("retry")
            raise
        await self._apply(task, model, base, target, text, usage)

    async def _model(self, tenant_id: uuid.UUID, user_id: uuid.UUID, model_id: str) -> ModelCatalogEntry:
        try:
            policy = await self._catalog.current_policy(tenant_id, user_id)
        except Exception as exc:
            raise TransientError(f"model policy unavailable: {exc}") from exc
        model = _find_model(policy.snapshot, model_id)
        if model is None:
            raise TransientError(f"summary model {model_id!r} is not in the catalog")
        return model

    async def _summarize(
        self,
        model: ModelCatalogEntry,
        task: ThreadSummaryTaskPayload,
        previous: str | None,
        messages: list[RangeMessage],
    ) -> tuple[str, Usage]:
        try:
            provider = self._providers.get(model.provider_id)
        except ProviderError as exc:
            raise TransientError(f"summary provider unavailable: {exc.message}") from exc
        lines = [message_line(m, self._config.message_content_limit) for m in messages]
        instructions = model.thread_summary_prompt or self._config.summary_system_prompt
        for attempt in range(MAX_CONTEXT_RETRIES + 1):
            request = ProviderRequest(
                model=model.provider_model_id,
                input=[InputMessage(role="user", content=[InputText(text=summary_input(previous, lines))])],
                instructions=instructions,
                max_output_tokens=min(model.max_output_tokens, MAX_SUMMARY_OUTPUT_TOKENS),
                user=f"{task.tenant_id}:system",
                metadata={
                    "system_task_type": SYSTEM_TASK_TYPE,
                    "system_request_id": str(task.system_request_id),
                },
            )
            try:
                result = await provider.complete(request, tenant_id=str(task.tenant_id))
            except ProviderError as exc:
                can_shrink = len(lines) > MIN_KEPT_LINES and attempt < MAX_CONTEXT_RETRIES
                if exc.code == "context_length_exceeded" and can_shrink:
                    drop = min(max(math.ceil(len(lines) / 5), 2), len(lines) - MIN_KEPT_LINES)
                    lines = lines[drop:]
                    continue
                raise TransientError(f"summary call failed: {exc.code}: {exc.message}") from exc
            text = extract_summary(result.text)
            if not text:
                raise TransientError("the summary model returned an empty summary")
            return text, result.usage
        raise TransientError("the conversation does not fit the summary model")  # not reached

    async def _apply(
        self,
        task: ThreadSummaryTaskPayload,
        model: ModelCatalogEntry,
        base: Frontier | None,
        target: Frontier,
        text: str,
        usage: Usage,
    ) -> None:
        now = self._clock()
        token_estimate = usage.output_tokens or math.ceil(len(text) / 4)
        async with self._outbox.transaction() as tx:
            if base is None:
                won = await repo.insert_first_summary(
                    self._db,
                    tenant_id=task.tenant_id,
                    chat_id=task.chat_id,
                    text=text,
                    frontier=target,
                    token_estimate=token_estimate,
                    now=now,
                )
            else:
                won = await repo.update_summary_if_frontier(
                    self._db,
                    chat_id=task.chat_id,
                    base=base,
                    text=text,
                    frontier=target,
                    token_estimate=token_estimate,
                    now=now,
                )
            if not won:
                self._metrics.count("cas_conflict")
                return
            await repo.mark_compressed(self._db, task.chat_id, base, target)
            await tx.enqueue(
                constants.QUEUE_USAGE,
                task.tenant_id,
                UsageEvent(
                    tenant_id=str(task.tenant_id),
                    chat_id=str(task.chat_id),
                    request_id=str(task.system_request_id),
                    effective_model=model.id,
                    selected_model=model.id,
                    terminal_state="completed",
                    billing_outcome="system_task",
                    actual_credits_micro=0,
                    settlement_method="none",
                    policy_version_applied=0,
                    timestamp=rfc3339(now),
                    requester_type="system",
                    usage=usage,
                    dedupe_key=dedupe_key(task.tenant_id, task.system_request_id),
                    system_task_type=SYSTEM_TASK_TYPE,
                ),
            )
        self._metrics.count("applied")
        log.info("chat %s: thread summary updated up to message %s", task.chat_id, target.message_id)


class QueueRegistrar(Protocol):
    def register_queue(
        self,
        name: str,
        handler: Callable[[Delivery], Awaitable[None]],
        *,
        partitions: int,
        timeout: float,
        lease_seconds: float | None = None,
    ) -> Any: ...


class SummaryOutbox(QueueRegistrar, OutboxPort, Protocol):
    pass


def register_summary_queue(
    outbox: SummaryOutbox,
    *,
    database: Any,
    catalog: CatalogPort,
    providers: ProvidersPort,
    config: Config,
    metrics: SummaryMetrics | None = None,
    clock: Clock = utc_now,
) -> ThreadSummaryHandler:
    """Register the `thread_summary` handler on the outbox (before it starts)."""
    if metrics is None:
        registry = getattr(getattr(outbox, "metrics", None), "registry", None)
        metrics = metrics_for(registry if isinstance(registry, CollectorRegistry) else None)
    handler = ThreadSummaryHandler(
        database,
        outbox,
        catalog=catalog,
        providers=providers,
        config=config.thread_summary,
        metrics=metrics,
        clock=clock,
    )
    # The lease is stretched when the timeout does not fit a short `outbox.lease_seconds`.
    timeout, lease = queue_timing(config, constants.QUEUE_THREAD_SUMMARY)
    outbox.register_queue(
        constants.QUEUE_THREAD_SUMMARY,
        handler,
        partitions=config.outbox.num_partitions,
        timeout=timeout,
        lease_seconds=lease,
    )
    return handler
