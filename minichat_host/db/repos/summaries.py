"""Thread summaries: the chat's summary row with its frontier, and the message range it compresses.

A frontier is the inclusive `(created_at, message_id)` position of the newest message a summary covers.
Writers compare-and-set on the frontier they started from, so two summary tasks for one chat can never
both apply: the first commit wins, the other finds the frontier moved and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from minichat_host.db.repos.attachments import is_postgresql
from minichat_host.db.repos.common import Executor, as_utc, as_uuid
from minichat_host.db.tables import messages, thread_summaries


@dataclass(frozen=True, slots=True)
class Frontier:
    """A `(created_at, id)` position in a chat's message order."""

    created_at: dt.datetime
    message_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class SummaryRecord:
    id: uuid.UUID
    tenant_id: uuid.UUID
    chat_id: uuid.UUID
    summary_text: str
    frontier: Frontier
    token_estimate: int
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class RangeMessage:
    id: uuid.UUID
    role: str
    content: str
    created_at: dt.datetime


def _after(position: Frontier) -> sa.ColumnElement[bool]:
    return sa.or_(
        messages.c.created_at > position.created_at,
        sa.and_(messages.c.created_at == position.created_at, messages.c.id > position.message_id),
    )


def _at_or_before(position: Frontier) -> sa.ColumnElement[bool]:
    return sa.or_(
        messages.c.created_at < position.created_at,
        sa.and_(messages.c.created_at == position.created_at, messages.c.id <= position.message_id),
    )


def _frontier_is(position: Frontier) -> sa.ColumnElement[bool]:
    return sa.and_(
        thread_summaries.c.summarized_up_to_created_at == position.created_at,
        thread_summaries.c.summarized_up_to_message_id == position.message_id,
    )


async def get_summary(db: Executor, chat_id: uuid.UUID) -> SummaryRecord | None:
    record = await db.fetch_one(sa.select(thread_summaries).where(thread_summaries.c.chat_id == chat_id))
    if record is None:
        return None
    return SummaryRecord(
        id=as_uuid(record["id"]),
        tenant_id=as_uuid(record["tenant_id"]),
        chat_id=as_uuid(record["chat_id"]),
        summary_text=record["summary_text"],
        frontier=Frontier(
            as_utc(record["summarized_up_to_created_at"]), as_uuid(record["summarized_up_to_message_id"])
        ),
        token_estimate=int(record["token_estimate"]),
        updated_at=as_utc(record["updated_at"]),
    )


async def newest_live_message(db: Executor, chat_id: uuid.UUID) -> Frontier | None:
    """The position of the chat's newest live message (the summary task's frozen target)."""
    record = await db.fetch_one(
        sa.select(messages.c.created_at, messages.c.id)
        .where(messages.c.chat_id == chat_id, messages.c.deleted_at.is_(None))
        .order_by(messages.c.created_at.desc(), messages.c.id.desc())
        .limit(1)
    )
    if record is None:
        return None
    return Frontier(as_utc(record["created_at"]), as_uuid(record["id"]))


async def messages_in_range(
    db: Executor, chat_id: uuid.UUID, base: Frontier | None, target: Frontier
) -> list[RangeMessage]:
    """Live, not yet compressed user and assistant messages in `(base, target]`, oldest first."""
    query = sa.select(messages.c.id, messages.c.role, messages.c.content, messages.c.created_at).where(
        messages.c.chat_id == chat_id,
        messages.c.deleted_at.is_(None),
        messages.c.is_compressed.is_(False),
        messages.c.role.in_(["user", "assistant"]),
        _at_or_before(target),
    )
    if base is not None:
        query = query.where(_after(base))
    records = await db.fetch_all(query.order_by(messages.c.created_at, messages.c.id))
    return [RangeMessage(as_uuid(r["id"]), r["role"], r["content"], as_utc(r["created_at"])) for r in records]


async def insert_first_summary(
    db: Executor,
    *,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    text: str,
    frontier: Frontier,
    token_estimate: int,
    now: dt.datetime,
) -> bool:
    """Insert the chat's first summary; False when another task inserted one first (CAS lost)."""
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "chat_id": chat_id,
        "summary_text": text,
        "summarized_up_to_message_id": frontier.message_id,
        "summarized_up_to_created_at": frontier.created_at,
        "token_estimate": token_estimate,
        "created_at": now,
        "updated_at": now,
    }
    insert = postgresql.insert if is_postgresql(db) else sqlite.insert
    statement = (
        insert(thread_summaries)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["chat_id"])
        .returning(thread_summaries.c.id)
    )
    return await db.fetch_one(statement) is not None


async def update_summary_if_frontier(
    db: Executor,
    *,
    chat_id: uuid.UUID,
    base: Frontier,
    text: str,
    frontier: Frontier,
    token_estimate: int,
    now: dt.datetime,
) -> bool:
    """Replace the summary only while its frontier is still `base`; False when it moved (CAS lost)."""
    row = await db.fetch_one(
        thread_summaries.update()
        .where(thread_summaries.c.chat_id == chat_id, _frontier_is(base))
        .values(
            summary_text=text,
            summarized_up_to_message_id=frontier.message_id,
            summarized_up_to_created_at=frontier.created_at,
            token_estimate=token_estimate,
            updated_at=now,
        )
        .returning(thread_summaries.c.id)
    )
    return row is not None


async def mark_compressed(db: Executor, chat_id: uuid.UUID, base: Frontier | None, target: Frontier) -> int:
    """Flag the live messages in `(base, target]` as compressed (history skips them); the count."""
    statement = messages.update().where(
        messages.c.chat_id == chat_id,
        messages.c.deleted_at.is_(None),
        messages.c.is_compressed.is_(False),
        _at_or_before(target),
    )
    if base is not None:
        statement = statement.where(_after(base))
    rows = await db.fetch_all(statement.values(is_compressed=True).returning(messages.c.id))
    return len(rows)
