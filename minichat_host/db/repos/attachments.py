"""Attachments, their message links, the chat's vector store row, and provider clean-up bookkeeping.

Every function runs on the `databases.Database` handed in; inside `async with db.transaction()` (or the
outbox's transaction) the queries of one task share that transaction. State changes are compare-and-set
UPDATEs with `RETURNING`, so "rows affected" is exact on both engines (`databases` reports no rowcount).
Row locks (`FOR UPDATE` / `FOR SHARE`) apply on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already serializes
writers, and SQLAlchemy leaves the clause out there.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from minichat_host.db.repos.common import Executor, as_utc, as_uuid
from minichat_host.db.tables import attachments, chat_vector_stores, chats, message_attachments

ATTACHMENT_STATUSES: Final = ("pending", "uploaded", "ready", "failed")


class CleanupOutcome(enum.Enum):
    """What recording a failed provider delete did to the attachment's clean-up state."""

    STILL_PENDING = "still_pending"  # attempts left: try again later
    TERMINAL_FAILURE = "terminal_failure"  # this attempt reached max_attempts: now `failed`
    ALREADY_TERMINAL = "already_terminal"  # not pending any more (a stale or concurrent delivery)


@dataclass(frozen=True, slots=True)
class ChatRef:
    """The parts of a chat row the attachment and clean-up rules need."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    model: str
    deleted_at: dt.datetime | None

    @classmethod
    def from_record(cls, record: Any) -> ChatRef:
        deleted = record["deleted_at"]
        return cls(
            id=as_uuid(record["id"]),
            tenant_id=as_uuid(record["tenant_id"]),
            user_id=as_uuid(record["user_id"]),
            model=record["model"],
            deleted_at=as_utc(deleted) if deleted is not None else None,
        )


_CHAT_COLUMNS: Final = (chats.c.id, chats.c.tenant_id, chats.c.user_id, chats.c.model, chats.c.deleted_at)


@dataclass(frozen=True, slots=True)
class AttachmentRecord:
    id: uuid.UUID
    tenant_id: uuid.UUID
    chat_id: uuid.UUID
    uploaded_by_user_id: uuid.UUID
    filename: str
    content_type: str
    size_bytes: int
    storage_backend: str
    provider_file_id: str | None
    status: str
    error_code: str | None
    attachment_kind: str
    doc_summary: str | None
    img_thumbnail: bytes | None
    img_thumbnail_width: int | None
    img_thumbnail_height: int | None
    summary_updated_at: dt.datetime | None
    cleanup_status: str | None
    cleanup_attempts: int
    last_cleanup_error: str | None
    for_file_search: bool
    for_code_interpreter: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None

    @classmethod
    def from_record(cls, record: Any) -> AttachmentRecord:
        def ts(name: str) -> dt.datetime | None:
            value = record[name]
            return as_utc(value) if value is not None else None

        thumbnail = record["img_thumbnail"]
        return cls(
            id=as_uuid(record["id"]),
            tenant_id=as_uuid(record["tenant_id"]),
            chat_id=as_uuid(record["chat_id"]),
            uploaded_by_user_id=as_uuid(record["uploaded_by_user_id"]),
            filename=record["filename"],
            content_type=record["content_type"],
            size_bytes=int(record["size_bytes"]),
            storage_backend=record["storage_backend"],
            provider_file_id=record["provider_file_id"],
            status=record["status"],
            error_code=record["error_code"],
            attachment_kind=record["attachment_kind"],
            doc_summary=record["doc_summary"],
            img_thumbnail=bytes(thumbnail) if thumbnail is not None else None,
            img_thumbnail_width=record["img_thumbnail_width"],
            img_thumbnail_height=record["img_thumbnail_height"],
            summary_updated_at=ts("summary_updated_at"),
            cleanup_status=record["cleanup_status"],
            cleanup_attempts=int(record["cleanup_attempts"]),
            last_cleanup_error=record["last_cleanup_error"],
            for_file_search=bool(record["for_file_search"]),
            for_code_interpreter=bool(record["for_code_interpreter"]),
            created_at=as_utc(record["created_at"]),
            updated_at=as_utc(record["updated_at"]),
            deleted_at=ts("deleted_at"),
        )

    @property
    def is_live(self) -> bool:
        return self.deleted_at is None


_ATTACHMENT_COLUMNS: Final = tuple(attachments.c[name] for name in AttachmentRecord.__dataclass_fields__)


def _any_of(column: sa.ColumnElement[Any], values: Sequence[Any]) -> sa.ColumnElement[bool]:
    """`column IN values`, written as ORs: each value is then a plain bound parameter that goes through
    the column type (`databases` on SQLite skips it for expanding IN parameters, and UUIDs fail to bind)."""
    return sa.or_(*(column == value for value in values))


def is_postgresql(db: Any) -> bool:
    """Whether a `databases.Database` or `databases.core.Connection` talks to PostgreSQL."""
    database = getattr(db, "_database", db)
    return str(database.url.dialect) in ("postgresql", "postgres")


# --- chats (read-only views for the attachment rules) ---------------------------------------------
async def owned_live_chat(
    db: Executor,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    chat_id: uuid.UUID,
    *,
    lock: bool = False,
) -> ChatRef | None:
    """The caller's live chat, or None (missing, deleted, or another tenant's or user's: all look alike).

    `lock=True` takes a shared row lock (PostgreSQL) so a concurrent chat delete waits for this transaction.
    """
    query = sa.select(*_CHAT_COLUMNS).where(
        chats.c.id == chat_id,
        chats.c.tenant_id == tenant_id,
        chats.c.user_id == user_id,
        chats.c.deleted_at.is_(None),
    )
    if lock:
        query = query.with_for_update(read=True)
    record = await db.fetch_one(query)
    return ChatRef.from_record(record) if record is not None else None


async def chat_by_id(db: Executor, chat_id: uuid.UUID) -> ChatRef | None:
    """Any chat, deleted or not (system paths: clean-up and summary handlers)."""
    record = await db.fetch_one(sa.select(*_CHAT_COLUMNS).where(chats.c.id == chat_id))
    return ChatRef.from_record(record) if record is not None else None


# --- attachment rows ------------------------------------------------------------------------------
async def insert_pending(
    db: Executor,
    *,
    attachment_id: uuid.UUID,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    uploaded_by_user_id: uuid.UUID,
    filename: str,
    content_type: str,
    size_bytes: int,
    storage_backend: str,
    attachment_kind: str,
    now: dt.datetime,
) -> None:
    await db.execute(
        attachments.insert().values(
            id=attachment_id,
            tenant_id=tenant_id,
            chat_id=chat_id,
            uploaded_by_user_id=uploaded_by_user_id,
            filename=filename,
            content_type=content_type,
            size_bytes=size_bytes,
            storage_backend=storage_backend,
            status="pending",
            attachment_kind=attachment_kind,
            cleanup_attempts=0,
            for_file_search=False,
            for_code_interpreter=False,
            created_at=now,
            updated_at=now,
        )
    )


async def chat_usage(db: Executor, chat_id: uuid.UUID) -> tuple[int, int]:
    """(live document count, live bytes of every kind) of a chat; failed uploads do not count."""
    record = await db.fetch_one(
        sa.select(
            sa.func.count().filter(attachments.c.attachment_kind == "document").label("documents"),
            sa.func.coalesce(sa.func.sum(attachments.c.size_bytes), 0).label("bytes"),
        ).where(
            attachments.c.chat_id == chat_id,
            attachments.c.deleted_at.is_(None),
            attachments.c.status != "failed",
        )
    )
    if record is None:
        return 0, 0
    return int(record["documents"]), int(record["bytes"])


async def get_in_chat(
    db: Executor, chat_id: uuid.UUID, attachment_id: uuid.UUID, *, lock: bool = False
) -> AttachmentRecord | None:
    """The attachment if it belongs to `chat_id` (deleted ones included: callers decide)."""
    query = sa.select(*_ATTACHMENT_COLUMNS).where(
        attachments.c.id == attachment_id, attachments.c.chat_id == chat_id
    )
    if lock:
        query = query.with_for_update()
    record = await db.fetch_one(query)
    return AttachmentRecord.from_record(record) if record is not None else None


async def get_by_id(db: Executor, attachment_id: uuid.UUID) -> AttachmentRecord | None:
    record = await db.fetch_one(sa.select(*_ATTACHMENT_COLUMNS).where(attachments.c.id == attachment_id))
    return AttachmentRecord.from_record(record) if record is not None else None


async def _cas(
    db: Executor, attachment_id: uuid.UUID, from_statuses: Sequence[str], values: dict[str, Any]
) -> bool:
    """Move a live attachment out of one of `from_statuses`; False when it was not in them (or deleted)."""
    row = await db.fetch_one(
        attachments.update()
        .where(
            attachments.c.id == attachment_id,
            attachments.c.status.in_(list(from_statuses)),
            attachments.c.deleted_at.is_(None),
        )
        .values(**values)
        .returning(attachments.c.id)
    )
    return row is not None


async def set_uploaded(
    db: Executor, attachment_id: uuid.UUID, *, provider_file_id: str, now: dt.datetime
) -> bool:
    """pending → uploaded with the provider's file id."""
    return await _cas(
        db,
        attachment_id,
        ("pending",),
        {"status": "uploaded", "provider_file_id": provider_file_id, "updated_at": now},
    )


async def set_ready(
    db: Executor,
    attachment_id: uuid.UUID,
    *,
    for_file_search: bool,
    for_code_interpreter: bool,
    thumbnail: tuple[bytes, int, int] | None,
    now: dt.datetime,
) -> bool:
    """uploaded → ready, with the routing flags and the image thumbnail (data, width, height)."""
    values: dict[str, Any] = {
        "status": "ready",
        "for_file_search": for_file_search,
        "for_code_interpreter": for_code_interpreter,
        "updated_at": now,
    }
    if thumbnail is not None:
        values.update(
            img_thumbnail=thumbnail[0], img_thumbnail_width=thumbnail[1], img_thumbnail_height=thumbnail[2]
        )
    return await _cas(db, attachment_id, ("uploaded",), values)


async def set_failed(db: Executor, attachment_id: uuid.UUID, *, error_code: str, now: dt.datetime) -> bool:
    """pending | uploaded → failed with `error_code`."""
    return await _cas(
        db,
        attachment_id,
        ("pending", "uploaded"),
        {"status": "failed", "error_code": error_code, "updated_at": now},
    )


async def discard(db: Executor, attachment_id: uuid.UUID, *, provider_file: bool, now: dt.datetime) -> bool:
    """Soft-delete a row nobody was told about (a failed upload). With a provider file left behind its
    clean-up becomes `pending`, else there is nothing to clean (`done`)."""
    row = await db.fetch_one(
        attachments.update()
        .where(attachments.c.id == attachment_id, attachments.c.deleted_at.is_(None))
        .values(
            deleted_at=now,
            updated_at=now,
            cleanup_status="pending" if provider_file else "done",
            cleanup_updated_at=now,
        )
        .returning(attachments.c.id)
    )
    return row is not None


async def is_referenced(db: Executor, chat_id: uuid.UUID, attachment_id: uuid.UUID) -> bool:
    """True when any message_attachments row links it (a deleted message's link counts too)."""
    row = await db.fetch_one(
        sa.select(message_attachments.c.message_id)
        .where(message_attachments.c.chat_id == chat_id, message_attachments.c.attachment_id == attachment_id)
        .limit(1)
    )
    return row is not None


async def soft_delete_for_cleanup(db: Executor, attachment_id: uuid.UUID, *, now: dt.datetime) -> bool:
    """Soft-delete a live attachment and mark its provider clean-up `pending`; False if already deleted."""
    row = await db.fetch_one(
        attachments.update()
        .where(attachments.c.id == attachment_id, attachments.c.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now, cleanup_status="pending", cleanup_updated_at=now)
        .returning(attachments.c.id)
    )
    return row is not None


# --- clean-up bookkeeping -------------------------------------------------------------------------
async def mark_pending_for_chat(db: Executor, chat_id: uuid.UUID, *, now: dt.datetime) -> int:
    """Chat soft-delete: every live attachment without a clean-up state becomes `pending`; the count."""
    rows = await db.fetch_all(
        attachments.update()
        .where(
            attachments.c.chat_id == chat_id,
            attachments.c.deleted_at.is_(None),
            attachments.c.cleanup_status.is_(None),
        )
        .values(cleanup_status="pending", cleanup_updated_at=now)
        .returning(attachments.c.id)
    )
    return len(rows)


async def find_pending_cleanup_by_chat(db: Executor, chat_id: uuid.UUID) -> list[AttachmentRecord]:
    """Every attachment of the chat whose provider clean-up is `pending` (live or soft-deleted)."""
    records = await db.fetch_all(
        sa.select(*_ATTACHMENT_COLUMNS)
        .where(attachments.c.chat_id == chat_id, attachments.c.cleanup_status == "pending")
        .order_by(attachments.c.created_at, attachments.c.id)
    )
    return [AttachmentRecord.from_record(r) for r in records]


async def count_failed_cleanup_by_chat(db: Executor, chat_id: uuid.UUID) -> int:
    value = await db.fetch_val(
        sa.select(sa.func.count())
        .select_from(attachments)
        .where(attachments.c.chat_id == chat_id, attachments.c.cleanup_status == "failed")
    )
    return int(value or 0)


async def mark_cleanup_done(db: Executor, attachment_id: uuid.UUID, *, now: dt.datetime) -> bool:
    row = await db.fetch_one(
        attachments.update()
        .where(attachments.c.id == attachment_id, attachments.c.cleanup_status == "pending")
        .values(cleanup_status="done", cleanup_updated_at=now, last_cleanup_error=None)
        .returning(attachments.c.id)
    )
    return row is not None


async def record_cleanup_attempt(
    db: Executor, attachment_id: uuid.UUID, *, error: str, max_attempts: int, now: dt.datetime
) -> CleanupOutcome:
    """Count one failed provider delete in a single guarded UPDATE (only a `pending` row changes).

    The attempt that reaches `max_attempts` turns the state into the terminal `failed`.
    """
    attempts = attachments.c.cleanup_attempts + 1
    row = await db.fetch_one(
        attachments.update()
        .where(attachments.c.id == attachment_id, attachments.c.cleanup_status == "pending")
        .values(
            cleanup_attempts=attempts,
            last_cleanup_error=error[:2000],
            cleanup_updated_at=now,
            cleanup_status=sa.case((attempts >= max_attempts, "failed"), else_="pending"),
        )
        .returning(attachments.c.cleanup_status)
    )
    if row is None:
        return CleanupOutcome.ALREADY_TERMINAL
    if row["cleanup_status"] == "failed":
        return CleanupOutcome.TERMINAL_FAILURE
    return CleanupOutcome.STILL_PENDING


# --- message links --------------------------------------------------------------------------------
async def lock_for_message(
    db: Executor, chat_id: uuid.UUID, attachment_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, AttachmentRecord]:
    """The chat's attachments among `attachment_ids`, share-locked (PostgreSQL) so that a concurrent
    DELETE waits for the sending transaction and then sees the new link (409), never a dangling one."""
    ids = list(attachment_ids)
    if not ids:
        return {}
    records = await db.fetch_all(
        sa.select(*_ATTACHMENT_COLUMNS)
        .where(attachments.c.chat_id == chat_id, _any_of(attachments.c.id, ids))
        .with_for_update(read=True)
    )
    result = {}
    for record in records:
        row = AttachmentRecord.from_record(record)
        result[row.id] = row
    return result


async def link_to_message(
    db: Executor,
    *,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    message_id: uuid.UUID,
    attachment_ids: Sequence[uuid.UUID],
    now: dt.datetime,
) -> None:
    for position, attachment_id in enumerate(attachment_ids):
        await db.execute(
            message_attachments.insert().values(
                tenant_id=tenant_id,
                chat_id=chat_id,
                message_id=message_id,
                attachment_id=attachment_id,
                # A microsecond apart, so that listing by (created_at, id) keeps the request's order.
                created_at=now + dt.timedelta(microseconds=position),
            )
        )


async def attachments_of_messages(
    db: Executor, chat_id: uuid.UUID, message_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[AttachmentRecord]]:
    """The attachments linked to each of `message_ids`, in link order (for message listings)."""
    ids = list(message_ids)
    if not ids:
        return {}
    records = await db.fetch_all(
        sa.select(message_attachments.c.message_id, *_ATTACHMENT_COLUMNS)
        .select_from(
            message_attachments.join(
                attachments,
                sa.and_(
                    attachments.c.id == message_attachments.c.attachment_id,
                    attachments.c.chat_id == message_attachments.c.chat_id,
                ),
            )
        )
        .where(message_attachments.c.chat_id == chat_id, _any_of(message_attachments.c.message_id, ids))
        .order_by(message_attachments.c.created_at, attachments.c.id)
    )
    result: dict[uuid.UUID, list[AttachmentRecord]] = {}
    for record in records:
        result.setdefault(as_uuid(record["message_id"]), []).append(AttachmentRecord.from_record(record))
    return result


async def ready_documents(db: Executor, chat_id: uuid.UUID) -> list[AttachmentRecord]:
    """The chat's live, ready documents (file search and code interpreter inputs), oldest first."""
    records = await db.fetch_all(
        sa.select(*_ATTACHMENT_COLUMNS)
        .where(
            attachments.c.chat_id == chat_id,
            attachments.c.deleted_at.is_(None),
            attachments.c.status == "ready",
            attachments.c.attachment_kind == "document",
        )
        .order_by(attachments.c.created_at, attachments.c.id)
    )
    return [AttachmentRecord.from_record(r) for r in records]


async def live_attachment_ids(
    db: Executor, tenant_id: uuid.UUID, attachment_ids: Iterable[uuid.UUID]
) -> set[uuid.UUID]:
    ids = list(attachment_ids)
    if not ids:
        return set()
    rows = await db.fetch_all(
        sa.select(attachments.c.id).where(
            attachments.c.tenant_id == tenant_id,
            _any_of(attachments.c.id, ids),
            attachments.c.deleted_at.is_(None),
        )
    )
    return {as_uuid(row["id"]) for row in rows}


# --- the chat's vector store ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class VectorStoreRecord:
    id: uuid.UUID
    tenant_id: uuid.UUID
    chat_id: uuid.UUID
    vector_store_id: str | None  # None: a placeholder whose creator has not finished
    provider: str
    file_count: int
    created_at: dt.datetime

    @classmethod
    def from_record(cls, record: Any) -> VectorStoreRecord:
        return cls(
            id=as_uuid(record["id"]),
            tenant_id=as_uuid(record["tenant_id"]),
            chat_id=as_uuid(record["chat_id"]),
            vector_store_id=record["vector_store_id"],
            provider=record["provider"],
            file_count=int(record["file_count"]),
            created_at=as_utc(record["created_at"]),
        )


async def vector_store_of_chat(db: Executor, chat_id: uuid.UUID) -> VectorStoreRecord | None:
    record = await db.fetch_one(sa.select(chat_vector_stores).where(chat_vector_stores.c.chat_id == chat_id))
    return VectorStoreRecord.from_record(record) if record is not None else None


async def insert_vector_store_placeholder(
    db: Executor,
    *,
    row_id: uuid.UUID,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    provider: str,
    now: dt.datetime,
) -> bool:
    """Claim the right to create the chat's vector store: True for the one caller whose row went in.

    The row is only inserted while the chat is live, so an upload racing a chat delete cannot leave a
    vector store that the chat clean-up has already passed.
    """
    values = {
        "id": row_id,
        "tenant_id": tenant_id,
        "chat_id": chat_id,
        "vector_store_id": None,
        "provider": provider,
        "file_count": 0,
        "created_at": now,
    }
    source = sa.select(*(sa.literal(v, type_=chat_vector_stores.c[k].type) for k, v in values.items())).where(
        sa.exists().where(chats.c.id == chat_id, chats.c.deleted_at.is_(None))
    )
    insert = postgresql.insert if is_postgresql(db) else sqlite.insert
    statement = (
        insert(chat_vector_stores)
        .from_select(list(values), source)
        .on_conflict_do_nothing(index_elements=["tenant_id", "chat_id"])
        .returning(chat_vector_stores.c.id)
    )
    return await db.fetch_one(statement) is not None


async def set_vector_store_id(db: Executor, row_id: uuid.UUID, vector_store_id: str) -> bool:
    row = await db.fetch_one(
        chat_vector_stores.update()
        .where(chat_vector_stores.c.id == row_id, chat_vector_stores.c.vector_store_id.is_(None))
        .values(vector_store_id=vector_store_id)
        .returning(chat_vector_stores.c.id)
    )
    return row is not None


async def delete_placeholder(db: Executor, row_id: uuid.UUID) -> bool:
    """Remove a placeholder (creation failed or its creator vanished) so that the next upload retries."""
    row = await db.fetch_one(
        chat_vector_stores.delete()
        .where(chat_vector_stores.c.id == row_id, chat_vector_stores.c.vector_store_id.is_(None))
        .returning(chat_vector_stores.c.id)
    )
    return row is not None


async def increment_file_count(db: Executor, row_id: uuid.UUID) -> None:
    await db.execute(
        chat_vector_stores.update()
        .where(chat_vector_stores.c.id == row_id)
        .values(file_count=chat_vector_stores.c.file_count + 1)
    )


async def delete_vector_store_row(db: Executor, row_id: uuid.UUID) -> None:
    await db.execute(chat_vector_stores.delete().where(chat_vector_stores.c.id == row_id))


async def vector_store_provider(
    db: Executor, tenant_id: uuid.UUID, vector_store_id: str
) -> tuple[str, uuid.UUID] | None:
    """(provider id, chat id) of a tenant's vector store, or None when no chat owns it."""
    record = await db.fetch_one(
        sa.select(chat_vector_stores.c.provider, chat_vector_stores.c.chat_id).where(
            chat_vector_stores.c.tenant_id == tenant_id,
            chat_vector_stores.c.vector_store_id == vector_store_id,
        )
    )
    if record is None:
        return None
    return str(record["provider"]), as_uuid(record["chat_id"])


__all__ = [
    "ATTACHMENT_STATUSES",
    "AttachmentRecord",
    "ChatRef",
    "CleanupOutcome",
    "VectorStoreRecord",
]
