"""The `chats` aggregate: owner-scoped reads, inserts, renames, soft deletes and the keyset listing.

Every read and write is scoped by tenant **and** user and sees live (not soft-deleted) chats only, so a
chat of another owner, or a deleted one, is simply absent. `message_count` counts the chat's visible
messages: not deleted and with a request_id (the rows the message list shows), a column that triggers on
`messages` keep (migration 0003) instead of a count per listed chat.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import sqlalchemy as sa

from minichat_host.db.prepared import Prepared
from minichat_host.db.repos.common import Executor, as_utc, as_uuid, row_record
from minichat_host.db.repos.pagination import (
    KeysetListing,
    KeysetOrder,
    PageCursor,
    fetch_keyset_page,
)
from minichat_host.db.repos.reads import fast_utc, fast_uuid, utc_read, uuid_read
from minichat_host.db.tables import chats

# Newest first, the original's default; the ascending variant serves `$orderby=updated_at asc`.
ORDER_UPDATED_DESC: Final = KeysetOrder("updated_at desc", chats.c.updated_at, chats.c.id, descending=True)
ORDER_UPDATED_ASC: Final = KeysetOrder("updated_at asc", chats.c.updated_at, chats.c.id, descending=False)


@row_record
class ChatRecord:
    id: uuid.UUID
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    model: str
    title: str | None
    is_temporary: bool
    created_at: dt.datetime
    updated_at: dt.datetime


@row_record
class CountedChat:
    chat: ChatRecord
    message_count: int


_Listed = TypeVar("_Listed")

# What a listing makes of each row, called with its values by position: (id, model, title, is_temporary,
# created_at, updated_at, message_count). The service builds its response items with it directly: a
# record and a counted record per row in between cost ~0.6 µs a row, on a page of twenty a twentieth of
# the request (bench/api_instructions.py).
ListedChatBuilder = Callable[[uuid.UUID, str, str | None, bool, dt.datetime, dt.datetime, int], _Listed]


def counted_chats(tenant_id: uuid.UUID, user_id: uuid.UUID) -> ListedChatBuilder[CountedChat]:
    """The builder of a listing's rows as the single reads' `CountedChat` records."""

    def build(
        id_: uuid.UUID,
        model: str,
        title: str | None,
        is_temporary: bool,
        created_at: dt.datetime,
        updated_at: dt.datetime,
        message_count: int,
    ) -> CountedChat:
        chat = ChatRecord(id_, tenant_id, user_id, model, title, is_temporary, created_at, updated_at)
        return CountedChat(chat, message_count)

    return build


@dataclass(frozen=True, slots=True)
class ChatPage(Generic[_Listed]):
    items: list[_Listed]
    next_cursor: PageCursor | None
    prev_cursor: PageCursor | None


_CHAT_COLUMNS: Final = (
    chats.c.id,
    chats.c.tenant_id,
    chats.c.user_id,
    chats.c.model,
    chats.c.title,
    chats.c.is_temporary,
    chats.c.created_at,
    chats.c.updated_at,
)


# The chat's visible messages: kept on the chat row by triggers on `messages` (migration 0003).
_MESSAGE_COUNT: Final = chats.c.message_count


def _owned_live(tenant_id: uuid.UUID, user_id: uuid.UUID) -> sa.ColumnElement[bool]:
    return sa.and_(chats.c.tenant_id == tenant_id, chats.c.user_id == user_id, chats.c.deleted_at.is_(None))


# The same scope with named bind parameters, for the prepared statements (db/prepared.py).
OWNED_LIVE: Final = sa.and_(
    chats.c.tenant_id == sa.bindparam("tenant_id"),
    chats.c.user_id == sa.bindparam("user_id"),
    chats.c.deleted_at.is_(None),
)
# What the prepared reads select: the owner's columns are known from the scope, and every UUID read costs.
OWNED_CHAT_COLUMNS: Final = (
    uuid_read(chats.c.id),
    chats.c.model,
    chats.c.title,
    chats.c.is_temporary,
    utc_read(chats.c.created_at),
    utc_read(chats.c.updated_at),
)
_GET_LIVE_QUERY: Final = sa.select(*OWNED_CHAT_COLUMNS).where(
    chats.c.id == sa.bindparam("chat_id"), OWNED_LIVE
)
_GET_LIVE: Final = {
    False: Prepared(_GET_LIVE_QUERY, "live chat"),
    True: Prepared(_GET_LIVE_QUERY.with_for_update(), "live chat for update"),
}
_GET_LIVE_COUNTED: Final = Prepared(
    sa.select(*OWNED_CHAT_COLUMNS, _MESSAGE_COUNT).where(chats.c.id == sa.bindparam("chat_id"), OWNED_LIVE),
    "live chat with message count",
)
_LISTING: Final = KeysetListing(
    "chats", columns=(*OWNED_CHAT_COLUMNS, _MESSAGE_COUNT), table=chats, scope=OWNED_LIVE
)


def owned_chat(tenant_id: uuid.UUID, user_id: uuid.UUID, values: Sequence[Any]) -> ChatRecord:
    """A chat of this owner from the values of OWNED_CHAT_COLUMNS, in order (a prepared statement's
    `row.values()`; the statement's scope made its tenant and user these)."""
    id_, model, title, is_temporary, created_at, updated_at = values[:6]
    return ChatRecord(
        id=fast_uuid(id_),
        tenant_id=tenant_id,
        user_id=user_id,
        model=model,
        title=title,
        is_temporary=bool(is_temporary),
        created_at=fast_utc(created_at),
        updated_at=fast_utc(updated_at),
    )


def _owned_counted(tenant_id: uuid.UUID, user_id: uuid.UUID, row: Any) -> CountedChat:
    """A chat and its count from a row of OWNED_CHAT_COLUMNS + _MESSAGE_COUNT."""
    values = row.values()
    return CountedChat(chat=owned_chat(tenant_id, user_id, values), message_count=values[6])


def _record(row: Any) -> ChatRecord:
    return ChatRecord(
        id=as_uuid(row["id"]),
        tenant_id=as_uuid(row["tenant_id"]),
        user_id=as_uuid(row["user_id"]),
        model=row["model"],
        title=row["title"],
        is_temporary=bool(row["is_temporary"]),
        created_at=as_utc(row["created_at"]),
        updated_at=as_utc(row["updated_at"]),
    )


async def insert_chat(conn: Executor, chat: ChatRecord) -> None:
    await conn.execute(
        chats.insert().values(
            id=chat.id,
            tenant_id=chat.tenant_id,
            user_id=chat.user_id,
            model=chat.model,
            title=chat.title,
            is_temporary=chat.is_temporary,
            created_at=chat.created_at,
            updated_at=chat.updated_at,
        )
    )


async def get_live(
    conn: Executor, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID, *, for_update: bool = False
) -> ChatRecord | None:
    """The owner's live chat, or None. `for_update` locks the row (PostgreSQL; SQLite locks by BEGIN
    IMMEDIATE) until the caller's transaction ends."""
    row = await _GET_LIVE[for_update].fetch_one(conn, chat_id=chat_id, tenant_id=tenant_id, user_id=user_id)
    return None if row is None else owned_chat(tenant_id, user_id, row.values())


async def get_live_counted(
    conn: Executor, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID
) -> CountedChat | None:
    row = await _GET_LIVE_COUNTED.fetch_one(conn, chat_id=chat_id, tenant_id=tenant_id, user_id=user_id)
    return None if row is None else _owned_counted(tenant_id, user_id, row)


async def rename_live(
    conn: Executor,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    chat_id: uuid.UUID,
    *,
    title: str,
    now: dt.datetime,
) -> ChatRecord | None:
    """Set the title and `updated_at` of the owner's live chat; None when there is no such chat."""
    row = await conn.fetch_one(
        chats.update()
        .where(chats.c.id == chat_id, _owned_live(tenant_id, user_id))
        .values(title=title, updated_at=now)
        .returning(*_CHAT_COLUMNS)
    )
    return None if row is None else _record(row)


async def soft_delete_live(
    conn: Executor, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID, *, now: dt.datetime
) -> ChatRecord | None:
    """Mark the owner's live chat deleted; None when there is no such chat (already deleted included)."""
    row = await conn.fetch_one(
        chats.update()
        .where(chats.c.id == chat_id, _owned_live(tenant_id, user_id))
        .values(deleted_at=now)
        .returning(*_CHAT_COLUMNS)
    )
    return None if row is None else _record(row)


async def list_page(
    conn: Executor,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    order: KeysetOrder,
    limit: int,
    cursor: PageCursor | None,
    build: ListedChatBuilder[_Listed],
) -> ChatPage[_Listed]:
    """One page of the owner's live chats in `order`, each with its visible message count, each row made
    into an item by `build` (`counted_chats` for records)."""
    page = await fetch_keyset_page(
        conn,
        _LISTING,
        {"tenant_id": tenant_id, "user_id": user_id},
        order=order,
        limit=limit,
        cursor=cursor,
    )
    # Built by position from the values of OWNED_CHAT_COLUMNS + _MESSAGE_COUNT, which the column types
    # have converted already (a page is 20-100 rows; each keyword and check here cost ~0.1 µs a row).
    return ChatPage(
        items=[
            build(id_, model, title, bool(temporary), created_at, updated_at, count)
            for id_, model, title, temporary, created_at, updated_at, count in page.rows
        ],
        next_cursor=page.next_cursor,
        prev_cursor=page.prev_cursor,
    )
