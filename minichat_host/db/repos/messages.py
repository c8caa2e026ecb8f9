"""The `messages` aggregate as the API lists it, and the attachment summaries of a page of messages.

Visible messages are live (`deleted_at IS NULL`) and carry a request_id; rows without one are internal
and never listed. Every query here names the chat (and its tenant): callers reach messages only through
a chat whose ownership they have already checked.
"""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import sqlalchemy as sa

from minichat_host.db.prepared import Prepared
from minichat_host.db.repos.common import Executor, row_record
from minichat_host.db.repos.pagination import (
    KeysetListing,
    KeysetOrder,
    PageCursor,
    fetch_keyset_page,
)
from minichat_host.db.repos.reads import fast_uuid, utc_read, uuid_read
from minichat_host.db.tables import attachments, chats, message_attachments, message_reactions, messages

# Oldest first, the original's default; the descending variant serves `$orderby=created_at desc`.
ORDER_CREATED_ASC: Final = KeysetOrder(
    "created_at asc", messages.c.created_at, messages.c.id, descending=False
)
ORDER_CREATED_DESC: Final = KeysetOrder(
    "created_at desc", messages.c.created_at, messages.c.id, descending=True
)


@row_record
class MessageRecord:
    id: uuid.UUID
    chat_id: uuid.UUID
    request_id: uuid.UUID | None
    role: str
    content: str
    model: str | None
    input_tokens: int
    output_tokens: int
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AttachmentSummaryRecord:
    message_id: uuid.UUID
    attachment_id: uuid.UUID
    kind: str
    filename: str
    status: str
    thumbnail: bytes | None
    thumbnail_width: int | None
    thumbnail_height: int | None


_Listed = TypeVar("_Listed")

# What a listing makes of each row, called with its values by position: (id, request_id, role, content,
# model, input_tokens, output_tokens, created_at, my_reaction), the last the owner's reaction (None without
# one, and always in a listing without an owner). The service builds its response items with it directly:
# a record per row in between, and the call that made it an item, cost ~0.6 µs a row.
ListedMessageBuilder = Callable[
    [uuid.UUID, uuid.UUID | None, str, str, str | None, int, int, dt.datetime, str | None], _Listed
]


def message_records(chat_id: uuid.UUID) -> ListedMessageBuilder[MessageRecord]:
    """The builder of a listing's rows as the single reads' `MessageRecord`s (the reaction left out)."""

    def build(
        id_: uuid.UUID,
        request_id: uuid.UUID | None,
        role: str,
        content: str,
        model: str | None,
        input_tokens: int,
        output_tokens: int,
        created_at: dt.datetime,
        my_reaction: str | None,
    ) -> MessageRecord:
        return MessageRecord(
            id_, chat_id, request_id, role, content, model, input_tokens, output_tokens, created_at
        )

    return build


@dataclass(frozen=True, slots=True)
class MessagePage(Generic[_Listed]):
    items: list[_Listed]
    next_cursor: PageCursor | None
    prev_cursor: PageCursor | None
    # Owner listings only: the messages with attachment links (their summaries are read for those alone;
    # most pages have none).
    with_attachments: list[uuid.UUID] = field(default_factory=list)


# The chat_id is not read back: every query here names the chat (and every UUID read costs).
_MESSAGE_COLUMNS: Final = (
    uuid_read(messages.c.id),
    uuid_read(messages.c.request_id),
    messages.c.role,
    messages.c.content,
    messages.c.model,
    messages.c.input_tokens,
    messages.c.output_tokens,
    utc_read(messages.c.created_at),
)


# Visible messages of one chat (bind parameters `tenant_id`, `chat_id`), for the prepared statements.
_VISIBLE_IN_CHAT: Final = sa.and_(
    messages.c.tenant_id == sa.bindparam("tenant_id"),
    messages.c.chat_id == sa.bindparam("chat_id"),
    messages.c.deleted_at.is_(None),
    messages.c.request_id.is_not(None),
)
_GET_VISIBLE: Final = Prepared(
    sa.select(*_MESSAGE_COLUMNS).where(messages.c.id == sa.bindparam("message_id"), _VISIBLE_IN_CHAT),
    "visible message",
)
_LISTING: Final = KeysetListing("messages", columns=_MESSAGE_COLUMNS, table=messages, scope=_VISIBLE_IN_CHAT)
# The same, only while the chat is the live chat of `user_id`: the owner check of a listing folded into its
# page query (an uncorrelated EXISTS, evaluated once), one statement less per page.
# An owner listing also reads, per message, the owner's reaction and whether attachments are linked: one
# round trip per page instead of three (both subqueries are lookups on unique keys).
_OWNER_EXTRAS: Final = (
    sa.select(message_reactions.c.reaction)
    .where(
        message_reactions.c.message_id == messages.c.id,
        message_reactions.c.user_id == sa.bindparam("user_id"),
        message_reactions.c.tenant_id == sa.bindparam("tenant_id"),
    )
    .scalar_subquery()
    .label("my_reaction"),
    sa.exists()
    .where(
        message_attachments.c.chat_id == messages.c.chat_id,
        message_attachments.c.message_id == messages.c.id,
    )
    .label("has_attachments"),
)
_OWNED_LISTING: Final = KeysetListing(
    "owned messages",
    columns=(*_MESSAGE_COLUMNS, *_OWNER_EXTRAS),
    table=messages,
    scope=sa.and_(
        _VISIBLE_IN_CHAT,
        sa.exists().where(
            chats.c.id == sa.bindparam("chat_id"),
            chats.c.tenant_id == sa.bindparam("tenant_id"),
            chats.c.user_id == sa.bindparam("user_id"),
            chats.c.deleted_at.is_(None),
        ),
    ),
)


def _record(chat_id: uuid.UUID, values: Sequence[Any]) -> MessageRecord:
    """A message of this chat from the values of _MESSAGE_COLUMNS (a prepared statement's), by position: the
    column types have converted them already."""
    id_, request_id, role, content, model, input_tokens, output_tokens, created_at = values[:8]
    return MessageRecord(
        id_,
        chat_id,
        request_id,
        role,
        content or "",
        model,
        int(input_tokens or 0),
        int(output_tokens or 0),
        created_at,
    )


async def get_visible(
    conn: Executor, tenant_id: uuid.UUID, chat_id: uuid.UUID, message_id: uuid.UUID
) -> MessageRecord | None:
    """The message if it is visible in this chat; None when missing, deleted, hidden or in another chat."""
    row = await _GET_VISIBLE.fetch_one(conn, message_id=message_id, tenant_id=tenant_id, chat_id=chat_id)
    return None if row is None else _record(chat_id, row.values())


async def list_visible_page(
    conn: Executor,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    *,
    order: KeysetOrder,
    limit: int,
    cursor: PageCursor | None,
    owner: uuid.UUID | None = None,
    build: ListedMessageBuilder[_Listed],
) -> MessagePage[_Listed]:
    """A page of the chat's visible messages, each row made into an item by `build` (`message_records` for
    records); with `owner`, an empty page unless the chat is that user's live chat (the caller then tells a
    missing chat from an empty one), the owner's reaction to each message, and the messages with
    attachments alongside."""
    scope: dict[str, Any] = {"tenant_id": tenant_id, "chat_id": chat_id}
    if owner is not None:
        scope["user_id"] = owner
    page = await fetch_keyset_page(
        conn,
        _LISTING if owner is None else _OWNED_LISTING,
        scope,
        order=order,
        limit=limit,
        cursor=cursor,
    )
    # By position from the values of _MESSAGE_COLUMNS (+ _OWNER_EXTRAS), which the column types converted.
    if owner is None:
        items = [
            build(
                id_, request_id, role, content or "", model, int(ins or 0), int(outs or 0), created_at, None
            )
            for id_, request_id, role, content, model, ins, outs, created_at in page.rows
        ]
        return MessagePage(items=items, next_cursor=page.next_cursor, prev_cursor=page.prev_cursor)
    items = []
    with_attachments: list[uuid.UUID] = []
    for id_, request_id, role, content, model, ins, outs, created_at, reaction, attached in page.rows:
        items.append(
            build(
                id_,
                request_id,
                role,
                content or "",
                model,
                int(ins or 0),
                int(outs or 0),
                created_at,
                reaction,
            )
        )
        if attached:
            with_attachments.append(id_)
    return MessagePage(
        items=items,
        next_cursor=page.next_cursor,
        prev_cursor=page.prev_cursor,
        with_attachments=with_attachments,
    )


@functools.lru_cache(maxsize=256)  # one per page size: at most 100 (MAX_PAGE_LIMIT)
def _attachment_summaries_statement(count: int) -> Prepared:
    """The summaries of `count` messages (bind parameters `tenant_id`, `chat_id`, `m0`...`m<count-1>`)."""
    linked = message_attachments.c.message_id
    query = (
        sa.select(
            message_attachments.c.message_id,
            attachments.c.id.label("attachment_id"),
            attachments.c.attachment_kind,
            attachments.c.filename,
            attachments.c.status,
            attachments.c.img_thumbnail,
            attachments.c.img_thumbnail_width,
            attachments.c.img_thumbnail_height,
        )
        .select_from(
            message_attachments.join(
                attachments,
                sa.and_(
                    attachments.c.id == message_attachments.c.attachment_id,
                    attachments.c.chat_id == message_attachments.c.chat_id,
                ),
            )
        )
        .where(
            message_attachments.c.tenant_id == sa.bindparam("tenant_id"),
            message_attachments.c.chat_id == sa.bindparam("chat_id"),
            linked.in_([sa.bindparam(f"m{number}", type_=linked.type) for number in range(count)]),
            attachments.c.deleted_at.is_(None),
        )
        .order_by(
            message_attachments.c.message_id,
            message_attachments.c.created_at,
            attachments.c.created_at,
            attachments.c.id,
        )
    )
    return Prepared(query, f"attachment summaries of {count} messages")


async def attachment_summaries(
    conn: Executor, tenant_id: uuid.UUID, chat_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[AttachmentSummaryRecord]]:
    """The live attachments linked to each of `message_ids`, in link order, in one query."""
    if not message_ids:
        return {}
    values = {f"m{number}": message_id for number, message_id in enumerate(message_ids)}
    rows = await _attachment_summaries_statement(len(message_ids)).fetch_all(
        conn, tenant_id=tenant_id, chat_id=chat_id, **values
    )
    result: dict[uuid.UUID, list[AttachmentSummaryRecord]] = {}
    for row in rows:
        message_id = fast_uuid(row["message_id"])
        thumbnail = row["img_thumbnail"]
        result.setdefault(message_id, []).append(
            AttachmentSummaryRecord(
                message_id=message_id,
                attachment_id=fast_uuid(row["attachment_id"]),
                kind=row["attachment_kind"],
                filename=row["filename"],
                status=row["status"],
                thumbnail=None if thumbnail is None else bytes(thumbnail),
                thumbnail_width=row["img_thumbnail_width"],
                thumbnail_height=row["img_thumbnail_height"],
            )
        )
    return result
