"""Provider clean-up through the outbox: the `attachment_cleanup` and `chat_cleanup` queue handlers, and
the chat soft-delete hook that starts a chat's clean-up (original-outbox-and-plugins.md §2).

Both paths delete provider files first and the chat's vector store last. Every failed file delete is
counted on the attachment with one guarded UPDATE (`cleanup_status='pending'` only); the attempt that
reaches `cleanup.max_attempts` makes the state the terminal `failed` (and counts in a metric), so a
provider that never recovers cannot hold a partition forever. Unlike the original, a deleted attachment
is marked `pending` in its delete transaction (pitfall 3), so its failed provider delete is retried and
never silently forgotten.

- attachment_cleanup (key: tenant_id): bad payload → dead letter; parent chat soft-deleted → done here
  (the chat's clean-up owns the file); not pending any more → done; no provider file → `done`; else the
  storage plugin deletes the file → `done`, or the failure is counted → retry, or dead letter at the cap.
- chat_cleanup (key: chat_id): bad payload or a chat that is not soft-deleted → dead letter; each pending
  attachment's file is deleted (failures counted; a terminal one is given up on); any still pending →
  retry; then the vector store is deleted (failure → retry, no cap) and its `chat_vector_stores` row is
  hard-deleted as the completion marker.
A storage plugin reports a file or store that is already gone as deleted (a provider 404 is success).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, Protocol, cast

import msgspec
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from minichat_host import constants
from minichat_host.config import Config
from minichat_host.db.repos import attachments as repo
from minichat_host.db.repos.attachments import AttachmentRecord, CleanupOutcome
from minichat_host.db.repos.common import Executor
from minichat_host.domain.attachments import AttachmentCleanupEvent, HookCaller
from minichat_host.outbox.enqueue import enqueue
from minichat_host.outbox.models import Delivery
from minichat_host.outbox.routing import queue_timing
from minichat_host.plugins.errors import PermanentError, TransientError

log = logging.getLogger("minichat.cleanup")

Clock = Callable[[], dt.datetime]
RESOURCE_FILE: Final = "file"
RESOURCE_VECTOR_STORE: Final = "vector_store"
# After the chat soft-delete commits, nudge the sequencer (a hint: the reconciler finds the row anyway).
WAKE_UP_DELAY_SECONDS: Final = 0.25


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ChatCleanupEvent(msgspec.Struct, kw_only=True):
    """Payload of the `chat_cleanup` queue, enqueued in the chat soft-delete transaction."""

    reason: Literal["chat_soft_delete"]
    tenant_id: uuid.UUID
    chat_id: uuid.UUID
    system_request_id: uuid.UUID
    chat_deleted_at: dt.datetime


class CleanupMetrics:
    """`minichat_cleanup_total{resource, outcome}` (completed | retry | failed) and the count of vector
    stores deleted while some of their files could not be."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "minichat_cleanup",
            "Provider clean-up results: completed, retry (attempt counted), failed (gave up at max_attempts)",
            ["resource", "outcome"],
            registry=registry,
        )
        self.vector_stores_with_failed_files = Counter(
            "minichat_cleanup_vector_store_with_failed_files",
            "Vector stores deleted while some of the chat's provider files stayed undeleted (terminal)",
            registry=registry,
        )

    def count(self, resource: str, outcome: str) -> None:
        self.outcomes.labels(resource, outcome).inc()


_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, CleanupMetrics] = (
    weakref.WeakKeyDictionary()
)


def metrics_for(registry: CollectorRegistry | None = None) -> CleanupMetrics:
    """The clean-up metrics on `registry` (default: the process-wide one), created once per registry."""
    target = REGISTRY if registry is None else registry
    metrics = _metrics_by_registry.get(target)
    if metrics is None:
        metrics = _metrics_by_registry[target] = CleanupMetrics(target)
    return metrics


class CleanupHandlers:
    """The two clean-up queue handlers of one app (one database, one plugin host)."""

    def __init__(
        self,
        database: Any,
        plugins: HookCaller,
        *,
        max_attempts: int,
        metrics: CleanupMetrics | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._db = database
        self._plugins = plugins
        self._max_attempts = max_attempts
        self._metrics = metrics or metrics_for()
        self._clock = clock

    # --- attachment_cleanup ---------------------------------------------------------------------
    async def attachment_cleanup(self, delivery: Delivery) -> None:
        event = delivery.decode(AttachmentCleanupEvent)
        chat = await repo.chat_by_id(self._db, event.chat_id)
        if chat is not None and chat.deleted_at is not None:
            log.debug(
                "attachment %s: chat %s is deleted, its clean-up owns the file", event.attachment_id, chat.id
            )
            return
        record = await repo.get_by_id(self._db, event.attachment_id)
        if record is None or record.cleanup_status != "pending":
            return  # gone with its chat, or already done / failed: a stale redelivery
        file_id = record.provider_file_id or event.provider_file_id
        if file_id is None:
            await repo.mark_cleanup_done(self._db, record.id, now=self._clock())
            return
        error = await self._delete_file(record, file_id)
        if error is None:
            await repo.mark_cleanup_done(self._db, record.id, now=self._clock())
            self._metrics.count(RESOURCE_FILE, "completed")
            log.info("attachment %s: provider file deleted", record.id)
            return
        outcome = await repo.record_cleanup_attempt(
            self._db, record.id, error=error, max_attempts=self._max_attempts, now=self._clock()
        )
        if outcome is CleanupOutcome.STILL_PENDING:
            self._metrics.count(RESOURCE_FILE, "retry")
            raise TransientError(f"provider file delete failed: {error}")
        if outcome is CleanupOutcome.TERMINAL_FAILURE:
            self._metrics.count(RESOURCE_FILE, "failed")
            log.warning(
                "attachment %s: giving up on its provider file after %d attempts",
                record.id,
                self._max_attempts,
            )
            raise PermanentError(f"max attempts ({self._max_attempts}) reached: {error}")

    # --- chat_cleanup ---------------------------------------------------------------------------
    async def chat_cleanup(self, delivery: Delivery) -> None:
        event = delivery.decode(ChatCleanupEvent)
        chat = await repo.chat_by_id(self._db, event.chat_id)
        if chat is None or chat.deleted_at is None:
            raise PermanentError(f"chat {event.chat_id} is not soft-deleted")

        still_pending = 0
        for record in await repo.find_pending_cleanup_by_chat(self._db, chat.id):
            if record.provider_file_id is not None:
                error = await self._delete_file(record, record.provider_file_id)
                if error is not None:
                    outcome = await repo.record_cleanup_attempt(
                        self._db, record.id, error=error, max_attempts=self._max_attempts, now=self._clock()
                    )
                    if outcome is CleanupOutcome.STILL_PENDING:
                        self._metrics.count(RESOURCE_FILE, "retry")
                        still_pending += 1
                    elif outcome is CleanupOutcome.TERMINAL_FAILURE:
                        self._metrics.count(RESOURCE_FILE, "failed")
                        log.warning("chat %s: giving up on the file of attachment %s", chat.id, record.id)
                    continue
            if (
                await repo.mark_cleanup_done(self._db, record.id, now=self._clock())
                and record.provider_file_id
            ):
                self._metrics.count(RESOURCE_FILE, "completed")
        if still_pending:
            raise TransientError(f"{still_pending} attachment file(s) of chat {chat.id} still to delete")

        store = await repo.vector_store_of_chat(self._db, chat.id)
        if store is None:
            return
        if await repo.find_pending_cleanup_by_chat(self._db, chat.id):
            raise TransientError(f"chat {chat.id} has attachments pending clean-up")
        failed = await repo.count_failed_cleanup_by_chat(self._db, chat.id)
        if failed:
            log.warning(
                "chat %s: deleting its vector store although %d file(s) could not be deleted", chat.id, failed
            )
            self._metrics.vector_stores_with_failed_files.inc()
        if store.vector_store_id is not None:
            try:
                await self._plugins.call(
                    constants.CAP_STORAGE,
                    "minichat_storage_delete_vector_store",
                    provider_id=store.provider,
                    tenant_id=str(chat.tenant_id),
                    vector_store_id=store.vector_store_id,
                )
            except Exception as exc:
                self._metrics.count(RESOURCE_VECTOR_STORE, "retry")
                raise TransientError(f"vector store delete failed: {_describe(exc)}") from exc
        await repo.delete_vector_store_row(self._db, store.id)
        if store.vector_store_id is not None:
            self._metrics.count(RESOURCE_VECTOR_STORE, "completed")
        log.info("chat %s: provider clean-up complete", chat.id)

    async def _delete_file(self, record: AttachmentRecord, file_id: str) -> str | None:
        """Delete the provider file; None on success, else the error text to record."""
        try:
            await self._plugins.call(
                constants.CAP_STORAGE,
                "minichat_storage_delete_file",
                provider_id=record.storage_backend,
                tenant_id=str(record.tenant_id),
                file_id=file_id,
            )
        except Exception as exc:
            log.warning("attachment %s: provider file delete failed: %s", record.id, _describe(exc))
            return _describe(exc)
        return None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- wiring -------------------------------------------------------------------------------------------
class QueueRegistrar(Protocol):
    """`Outbox.register_queue` (outbox/scheduler.py)."""

    def register_queue(
        self,
        name: str,
        handler: Callable[[Delivery], Awaitable[None]],
        *,
        partitions: int,
        timeout: float,
        lease_seconds: float | None = None,
    ) -> Any: ...


def register_cleanup_queues(
    outbox: QueueRegistrar,
    plugin_host: HookCaller,
    database: Any,
    config: Config,
    *,
    metrics: CleanupMetrics | None = None,
    clock: Clock = utc_now,
) -> CleanupHandlers:
    """Register the `attachment_cleanup` and `chat_cleanup` handlers on the outbox (before it starts).

    Metrics go to the outbox's registry when it has one (so `/metrics` shows them next to the queues).
    """
    if metrics is None:
        registry = getattr(getattr(outbox, "metrics", None), "registry", None)
        metrics = metrics_for(registry if isinstance(registry, CollectorRegistry) else None)
    handlers = CleanupHandlers(
        database, plugin_host, max_attempts=config.cleanup.max_attempts, metrics=metrics, clock=clock
    )
    for queue, handler in (
        (constants.QUEUE_ATTACHMENT_CLEANUP, handlers.attachment_cleanup),
        (constants.QUEUE_CHAT_CLEANUP, handlers.chat_cleanup),
    ):
        # The lease is stretched when the timeout does not fit a short `outbox.lease_seconds`.
        timeout, lease = queue_timing(config, queue)
        outbox.register_queue(
            queue, handler, partitions=config.outbox.num_partitions, timeout=timeout, lease_seconds=lease
        )
    return handlers


class ChatRow(Protocol):
    @property
    def id(self) -> uuid.UUID: ...

    @property
    def tenant_id(self) -> uuid.UUID: ...


class Notifier(Protocol):
    def notify(self, queue: str, partition: int | None = None) -> None: ...


async def on_chat_deleted(conn: Executor, chat: ChatRow, *, clock: Clock = utc_now) -> None:
    """Chat soft-delete hook (runs inside that transaction, on its connection): mark the chat's live
    attachments `cleanup_status='pending'` and enqueue its `chat_cleanup` message. Raising rolls the
    deletion back, so a chat is never deleted without its clean-up."""
    now = clock()
    deleted = await repo.chat_by_id(conn, chat.id)
    deleted_at = deleted.deleted_at if deleted is not None and deleted.deleted_at is not None else now
    await repo.mark_pending_for_chat(conn, chat.id, now=now)
    event = ChatCleanupEvent(
        reason="chat_soft_delete",
        tenant_id=chat.tenant_id,
        chat_id=chat.id,
        system_request_id=uuid.uuid4(),
        chat_deleted_at=deleted_at,
    )
    # The chat service hands its transaction's connection; `enqueue` writes through it.
    await enqueue(cast(Any, conn), constants.QUEUE_CHAT_CLEANUP, chat.id, event)


def chat_deletion_hook(
    notifier: Notifier | None = None, *, clock: Clock = utc_now
) -> Callable[[Executor, Any], Awaitable[None]]:
    """`on_chat_deleted` for `ChatService.add_deletion_hook`, with a wake-up hint for the outbox.

    The hook runs inside the chat service's own transaction, which commits after it returns, so the
    sequencer is nudged a moment later; if that is still too early the reconciler finds the message.
    """

    async def hook(conn: Executor, chat: Any) -> None:
        await on_chat_deleted(conn, chat, clock=clock)
        if notifier is not None:
            asyncio.get_running_loop().call_later(
                WAKE_UP_DELAY_SECONDS, notifier.notify, constants.QUEUE_CHAT_CLEANUP, None
            )

    return hook
