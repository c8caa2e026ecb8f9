"""`chats.message_count` (migration 0003): the triggers on `messages` keep it equal to a recount of the
chat's visible messages (live, with a request id) through every kind of write, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import databases
import sqlalchemy as sa

from minichat_host.db import migrate
from minichat_host.db.engine import connect_database
from minichat_host.db.tables import chats, messages

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
TENANT = uuid.uuid4()


async def _chat(database: databases.Database) -> uuid.UUID:
    chat_id = uuid.uuid4()
    await database.execute(
        chats.insert().values(
            id=chat_id, tenant_id=TENANT, user_id=uuid.uuid4(), model="m", created_at=NOW, updated_at=NOW
        )
    )
    return chat_id


async def _message(
    database: databases.Database, chat_id: uuid.UUID, request_id: uuid.UUID | None, **extra: Any
) -> uuid.UUID:
    message_id = uuid.uuid4()
    await database.execute(
        messages.insert().values(
            id=message_id,
            tenant_id=TENANT,
            chat_id=chat_id,
            request_id=request_id,
            role=extra.pop("role", "user"),
            content="hi",
            created_at=NOW,
            **extra,
        )
    )
    return message_id


async def _counts(database: databases.Database, *chat_ids: uuid.UUID) -> list[tuple[int, int]]:
    """(stored, recounted) per chat."""
    recount = (
        sa.select(sa.func.count())
        .select_from(messages)
        .where(messages.c.chat_id == chats.c.id, messages.c.request_id.is_not(None))
        .where(messages.c.deleted_at.is_(None))
        .scalar_subquery()
    )
    result = []
    for chat_id in chat_ids:
        row = await database.fetch_one(
            sa.select(chats.c.message_count, recount.label("recount")).where(chats.c.id == chat_id)
        )
        assert row is not None
        result.append((row["message_count"], row["recount"]))
    return result


async def test_inserts_count_only_visible_messages(database: databases.Database) -> None:
    chat_id = await _chat(database)
    assert await _counts(database, chat_id) == [(0, 0)]
    request_id = uuid.uuid4()
    await _message(database, chat_id, request_id)
    await _message(database, chat_id, request_id, role="assistant")
    await _message(database, chat_id, None, role="system")  # no request id: not listed
    await _message(database, chat_id, uuid.uuid4(), deleted_at=NOW)  # born deleted
    assert await _counts(database, chat_id) == [(2, 2)]


async def test_soft_delete_restore_and_unrelated_updates(database: databases.Database) -> None:
    chat_id = await _chat(database)
    request_id = uuid.uuid4()
    first = await _message(database, chat_id, request_id)
    await _message(database, chat_id, request_id, role="assistant")
    by_request = messages.c.chat_id == chat_id, messages.c.request_id == request_id
    await database.execute(messages.update().where(*by_request).values(deleted_at=NOW))
    assert await _counts(database, chat_id) == [(0, 0)]
    # Deleting what is already deleted, or touching other columns, changes nothing.
    await database.execute(messages.update().where(*by_request).values(deleted_at=NOW + dt.timedelta(1)))
    await database.execute(messages.update().where(messages.c.id == first).values(content="edited"))
    assert await _counts(database, chat_id) == [(0, 0)]
    await database.execute(messages.update().where(messages.c.id == first).values(deleted_at=None))
    assert await _counts(database, chat_id) == [(1, 1)]
    await database.execute(messages.update().where(messages.c.id == first).values(request_id=None))
    assert await _counts(database, chat_id) == [(0, 0)]


async def test_moves_and_hard_deletes(database: databases.Database) -> None:
    source, target = await _chat(database), await _chat(database)
    moved = await _message(database, source, uuid.uuid4())
    await _message(database, source, uuid.uuid4())
    await database.execute(messages.update().where(messages.c.id == moved).values(chat_id=target))
    assert await _counts(database, source, target) == [(1, 1), (1, 1)]
    await database.execute(messages.delete().where(messages.c.chat_id == source))
    assert await _counts(database, source, target) == [(0, 0), (1, 1)]
    # A chat deleted outright takes its messages with it (ON DELETE CASCADE); the trigger meets no chat.
    await database.execute(chats.delete().where(chats.c.id == target))
    assert await database.fetch_val(sa.select(sa.func.count()).select_from(messages)) == 0


async def test_the_upgrade_counts_the_messages_already_there(db_url: str) -> None:
    await migrate.aupgrade(db_url, "0002_outbox")
    database = await connect_database(db_url)
    try:
        # The table definitions' inserts name no message_count: they run on the schema before 0003 too.
        busy, empty = await _chat(database), await _chat(database)
        request_id = uuid.uuid4()
        await _message(database, busy, request_id)
        await _message(database, busy, request_id, role="assistant")
        await _message(database, busy, uuid.uuid4(), deleted_at=NOW)
        await migrate.aupgrade(db_url)
        assert await _counts(database, busy, empty) == [(2, 2), (0, 0)]
        await _message(database, empty, uuid.uuid4())
        assert await _counts(database, busy, empty) == [(2, 2), (1, 1)]
    finally:
        await database.disconnect()
