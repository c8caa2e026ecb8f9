"""The `message_reactions` aggregate: one reaction per (message, user), set by upsert, removed by delete.

A page of messages reads the owner's reactions in its own query (messages.py `_OWNER_EXTRAS`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from minichat_host.db.repos.common import DialectName, Executor, as_utc, as_uuid
from minichat_host.db.tables import message_reactions


@dataclass(frozen=True, slots=True)
class ReactionRecord:
    message_id: uuid.UUID
    reaction: str
    created_at: dt.datetime


async def upsert(
    conn: Executor,
    dialect: DialectName,
    *,
    tenant_id: uuid.UUID,
    message_id: uuid.UUID,
    user_id: uuid.UUID,
    reaction: str,
    now: dt.datetime,
) -> ReactionRecord:
    """Set the user's reaction in one statement (no read-modify-write race between concurrent PUTs).

    `created_at` is the time the current value was chosen: repeating the same reaction keeps it.
    """
    insert = (pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert)(message_reactions)
    stmt = insert.values(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        message_id=message_id,
        user_id=user_id,
        reaction=reaction,
        created_at=now,
    )
    current = message_reactions.c
    upsert_stmt = stmt.on_conflict_do_update(
        index_elements=[current.message_id, current.user_id],
        set_={
            "reaction": stmt.excluded.reaction,
            "created_at": sa.case(
                (current.reaction == stmt.excluded.reaction, current.created_at),
                else_=stmt.excluded.created_at,
            ),
        },
    ).returning(current.message_id, current.reaction, current.created_at)
    row = await conn.fetch_one(upsert_stmt)
    if row is None:  # pragma: no cover - an upsert with RETURNING always yields its row
        raise RuntimeError("reaction upsert returned no row")
    return ReactionRecord(
        message_id=as_uuid(row["message_id"]), reaction=row["reaction"], created_at=as_utc(row["created_at"])
    )


async def delete(conn: Executor, *, tenant_id: uuid.UUID, message_id: uuid.UUID, user_id: uuid.UUID) -> None:
    await conn.execute(
        message_reactions.delete().where(
            message_reactions.c.tenant_id == tenant_id,
            message_reactions.c.message_id == message_id,
            message_reactions.c.user_id == user_id,
        )
    )
