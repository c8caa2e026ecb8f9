"""The `message_reactions` aggregate: one reaction per (message, user), set by upsert, removed by delete."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from minichat_host.db.prepared import Prepared
from minichat_host.db.repos.common import DialectName, Executor, as_utc, as_uuid
from minichat_host.db.repos.reads import fast_uuid
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


@functools.lru_cache(maxsize=256)  # one per page size: at most 100 (MAX_PAGE_LIMIT)
def _for_messages_statement(count: int) -> Prepared:
    """The user's reactions on `count` messages (bind parameters `tenant_id`, `user_id`, `m0`...)."""
    column = message_reactions.c.message_id
    return Prepared(
        sa.select(message_reactions.c.message_id, message_reactions.c.reaction).where(
            message_reactions.c.tenant_id == sa.bindparam("tenant_id"),
            message_reactions.c.user_id == sa.bindparam("user_id"),
            column.in_([sa.bindparam(f"m{number}", type_=column.type) for number in range(count)]),
        ),
        f"reactions on {count} messages",
    )


async def for_messages(
    conn: Executor, *, tenant_id: uuid.UUID, user_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The user's reaction on each of `message_ids` that has one, in one query."""
    if not message_ids:
        return {}
    values = {f"m{number}": message_id for number, message_id in enumerate(message_ids)}
    rows = await _for_messages_statement(len(message_ids)).fetch_all(
        conn, tenant_id=tenant_id, user_id=user_id, **values
    )
    return {fast_uuid(row[0]): row[1] for row in rows}
