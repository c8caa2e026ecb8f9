"""SQLite writes of one process run on one connection (db/engine.py `_SQLiteWriter`), one writer at a time:
the transaction's statements see its own writes, other tasks read committed rows on their pooled
connections without waiting, and whatever ends a transaction (commit, rollback, a failed COMMIT, a
cancellation) leaves the writer at rest for the next one."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import Any

import databases
import pytest
import sqlalchemy as sa

from minichat_host.db.engine import WRITER_CACHE_KIB, connect_database, sqlite_writes
from minichat_host.db.prepared import Prepared
from minichat_host.db.tables import chats

INSERT_CHAT = Prepared(chats.insert(), "insert chat (writer test)")
TITLES = Prepared(
    sa.select(chats.c.title).where(chats.c.tenant_id == sa.bindparam("tenant_id")).order_by(chats.c.title),
    "titles (writer test)",
)


@pytest.fixture
async def database(sqlite_migrated_db_url: str) -> AsyncIterator[databases.Database]:
    db = await connect_database(sqlite_migrated_db_url, sqlite_busy_timeout_ms=2000)
    try:
        yield db
    finally:
        await db.disconnect()


def _chat(tenant: uuid.UUID, title: str) -> dict[str, object]:
    at = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant,
        "user_id": uuid.uuid4(),
        "model": "gpt",
        "title": title,
        "is_temporary": False,
        "created_at": at,
        "updated_at": at,
    }


def _raw(database: databases.Database) -> sqlite3.Connection:
    """The sqlite3 connection this task's statements run on right now."""
    connection: Any = database.connection().raw_connection
    raw: sqlite3.Connection = connection.raw
    return raw


def _writer(database: databases.Database) -> Any:
    return database._backend._writer  # type: ignore[attr-defined]


async def _titles(database: databases.Database, tenant: uuid.UUID) -> list[str]:
    return [row["title"] for row in await TITLES.fetch_all(database, tenant_id=tenant)]


async def test_every_transaction_writes_on_one_connection_and_reads_stay_pooled(
    database: databases.Database,
) -> None:
    tenant = uuid.uuid4()
    seen: list[tuple[sqlite3.Connection, sqlite3.Connection]] = []

    async def one(title: str) -> None:
        async with database.connection():
            before = _raw(database)
            async with database.transaction():
                inside = _raw(database)
                await INSERT_CHAT.execute(database, **_chat(tenant, title))
            assert _raw(database) is before  # the pooled connection is back for what follows
            seen.append((before, inside))

    await asyncio.gather(*(one(f"t{index}") for index in range(6)))
    assert len({id(inside) for _, inside in seen}) == 1
    assert all(inside is not before for before, inside in seen)
    assert await _titles(database, tenant) == [f"t{index}" for index in range(6)]
    pool: Any = database._backend._pool  # type: ignore[attr-defined]
    writer_raw = seen[0][1]
    assert all(idle.raw is not writer_raw for idle in pool._idle)  # the writer is never pooled
    assert not writer_raw.in_transaction
    # It serves most reads too: the page cache the pooled connections had between them.
    assert writer_raw.execute("PRAGMA cache_size").fetchone()[0] == -WRITER_CACHE_KIB


async def test_uncommitted_rows_stay_invisible_to_other_tasks_which_do_not_wait_to_read(
    database: databases.Database,
) -> None:
    tenant = uuid.uuid4()
    await INSERT_CHAT.execute(database, **_chat(tenant, "committed"))
    inserted, release = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with database.transaction():
            await INSERT_CHAT.execute(database, **_chat(tenant, "pending"))
            assert await _titles(database, tenant) == ["committed", "pending"]
            inserted.set()
            await release.wait()

    task = asyncio.create_task(writer())
    await inserted.wait()
    assert await asyncio.wait_for(_titles(database, tenant), 5) == ["committed"]

    second_started = asyncio.Event()

    async def second_writer() -> list[str]:
        async with database.transaction():
            second_started.set()
            return await _titles(database, tenant)

    waiting = asyncio.create_task(second_writer())
    await asyncio.sleep(0.05)
    assert not second_started.is_set()  # one writer at a time
    release.set()
    await task
    assert await asyncio.wait_for(waiting, 5) == ["committed", "pending"]


async def test_a_rolled_back_or_cancelled_transaction_leaves_the_writer_at_rest(
    database: databases.Database,
) -> None:
    tenant = uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with database.transaction():
            await INSERT_CHAT.execute(database, **_chat(tenant, "rolled back"))
            raise RuntimeError("undo")

    entered = asyncio.Event()

    async def cancelled() -> None:
        async with database.transaction():
            await INSERT_CHAT.execute(database, **_chat(tenant, "cancelled"))
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(cancelled())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with database.transaction():
        await INSERT_CHAT.execute(database, **_chat(tenant, "next"))
    assert await _titles(database, tenant) == ["next"]
    assert not _writer(database)._connection.in_transaction
    assert not _writer(database).gate._lock.locked()


async def test_a_failed_commit_is_rolled_back_before_the_next_writer(database: databases.Database) -> None:
    tenant = uuid.uuid4()
    async with database.transaction():
        await database.execute(
            "CREATE TABLE deferred_child (id INTEGER PRIMARY KEY, chat_id CHAR(32) "
            "REFERENCES chats (id) DEFERRABLE INITIALLY DEFERRED)"
        )
    with pytest.raises(sqlite3.IntegrityError):
        async with database.transaction():
            await INSERT_CHAT.execute(database, **_chat(tenant, "with an orphan"))
            await database.execute("INSERT INTO deferred_child (chat_id) VALUES ('no such chat')")
    assert not _writer(database)._connection.in_transaction
    async with database.transaction():
        await INSERT_CHAT.execute(database, **_chat(tenant, "after"))
    assert await _titles(database, tenant) == ["after"]
    assert await database.fetch_val("SELECT count(*) FROM deferred_child") == 0


async def test_sqlite_writes_takes_the_writer_and_lets_a_transaction_join_it(
    database: databases.Database,
) -> None:
    tenant = uuid.uuid4()
    async with database.transaction():
        pass
    writer_raw = _writer(database)._connection.raw
    other_started = asyncio.Event()

    async def other() -> None:
        async with database.transaction():
            other_started.set()
            await INSERT_CHAT.execute(database, **_chat(tenant, "other"))

    async with database.connection():
        async with sqlite_writes(database):
            assert _raw(database) is writer_raw
            await INSERT_CHAT.execute(database, **_chat(tenant, "autocommit"))
            competing = asyncio.create_task(other())
            async with database.transaction():  # joins the scope's turn at the gate: no deadlock
                assert _raw(database) is writer_raw
                await INSERT_CHAT.execute(database, **_chat(tenant, "inside"))
            async with sqlite_writes(database):  # nested scopes too
                assert _raw(database) is writer_raw
            assert _raw(database) is writer_raw
            await asyncio.sleep(0.05)
            assert not other_started.is_set()
        assert _raw(database) is not writer_raw
    await asyncio.wait_for(competing, 5)
    assert await _titles(database, tenant) == ["autocommit", "inside", "other"]


async def test_reads_use_the_writer_while_no_one_writes_and_a_pooled_connection_while_someone_does(
    database: databases.Database,
) -> None:
    tenant = uuid.uuid4()
    async with database.transaction():
        await INSERT_CHAT.execute(database, **_chat(tenant, "committed"))
    traced: list[str] = []
    _writer(database)._connection.raw.set_trace_callback(traced.append)
    by_title = sa.select(chats.c.title).where(chats.c.tenant_id == tenant)

    # Nobody writes: the writer connection (warm page cache) answers, with or without a held connection.
    assert await _titles(database, tenant) == ["committed"]
    async with database.connection():
        rows = await database.fetch_all(by_title)
        assert [row["title"] for row in rows] == ["committed"]
        assert await _titles(database, tenant) == ["committed"]
    assert len([sql for sql in traced if sql.startswith("SELECT chats.title")]) == 3

    # Someone writes: a read neither waits for the writer nor sees its uncommitted row.
    traced.clear()
    inserted, release = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with database.transaction():
            await INSERT_CHAT.execute(database, **_chat(tenant, "pending"))
            inserted.set()
            await release.wait()

    task = asyncio.create_task(writer())
    await inserted.wait()
    async with database.connection():
        rows = await asyncio.wait_for(database.fetch_all(by_title), 5)
        assert [row["title"] for row in rows] == ["committed"]
    assert await asyncio.wait_for(_titles(database, tenant), 5) == ["committed"]
    assert not [sql for sql in traced if sql.startswith("SELECT chats.title")]
    release.set()
    await task
    assert await _titles(database, tenant) == ["committed", "pending"]
