"""A PostgreSQL connection lost in the middle of work must not stay with the task that held it.

`databases` 0.9 keeps one connection per task. When the server goes away during a transaction or while a
connection is being given back, databases itself skips the release: the task then fails on every later
query ("connection is closed" / "Connection is already acquired") and the pool never closes. That wedged
the outbox loops after a PostgreSQL restart (tests/faults/test_database_outage.py); minichat_host/db/engine.py
gives the connection back in every case. These tests cut connections on purpose, on one task, and check
that the same task works again and that the pool still closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import databases
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from minichat_host.db.engine import connect_database, is_unavailable_error


@pytest.fixture
async def database(pg_db_url: str) -> AsyncIterator[databases.Database]:
    db = await connect_database(pg_db_url, min_size=1, max_size=2)
    try:
        yield db
    finally:
        # A connection that was never given back would make this wait forever.
        await asyncio.wait_for(db.disconnect(), 20)


@pytest.fixture
async def admin(pg_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    url = make_url(pg_db_url)
    connection = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database=url.database)
    try:
        yield connection
    finally:
        await connection.close()


async def _until_closed(database: databases.Database) -> None:
    raw = database.connection()._connection._connection
    for _ in range(500):
        try:
            if raw is None or raw.is_closed():
                return
        except asyncpg.InterfaceError:  # the pool already took the dead connection back from the proxy
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the killed connection was never noticed")


async def backend_pid(database: databases.Database) -> int:
    pid = await database.fetch_val(sa.text("SELECT pg_backend_pid()"))
    assert isinstance(pid, int)
    return pid


@pytest.mark.parametrize("noticed_first", [False, True], ids=["mid-query", "noticed-first"])
async def test_a_transaction_whose_connection_is_killed_gives_it_back(
    database: databases.Database, admin: asyncpg.Connection, noticed_first: bool
) -> None:
    with pytest.raises(Exception) as raised:
        async with database.transaction():
            pid = await backend_pid(database)
            await admin.execute("SELECT pg_terminate_backend($1)", pid)
            if noticed_first:
                # asyncpg sees the socket close before the next query: it hands the connection back to
                # its pool itself, and the query fails with "released back to the pool" (seen in CI).
                await _until_closed(database)
            await database.fetch_val(sa.text("SELECT 1"))
    assert is_unavailable_error(raised.value), repr(raised.value)
    # The same task: a fresh connection, in and out of a transaction.
    assert await database.fetch_val(sa.text("SELECT 1")) == 1
    async with database.transaction():
        assert await backend_pid(database) != pid


async def test_a_connection_lost_while_it_is_given_back_is_forgotten(
    database: databases.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg resets a connection when the pool takes it back; when the server vanished at that moment,
    # asyncpg terminates the connection (freeing its pool slot) and re-raises. Script exactly that once.
    # (`_reset` is the part of the reset the pool runs with minichat's own `reset` callback, too.)
    original_reset = asyncpg.Connection._reset
    failures = [
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    ]

    async def reset(self: asyncpg.Connection, *args: Any, **kwargs: Any) -> None:
        if failures:
            self.terminate()
            raise failures.pop()
        await original_reset(self, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "_reset", reset)
    # An idle connection given back is parked (db/engine.py) and never reset; asyncpg's release (and its
    # reset) still runs for one that cannot be parked, which parking switched off stands for here.
    monkeypatch.setattr(database._backend, "_parking", False)
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        async with database.connection() as connection:
            await connection.fetch_val(sa.text("SELECT 1"))
    assert not failures
    # The same task gets a working connection again.
    assert await database.fetch_val(sa.text("SELECT 2")) == 2
    async with database.transaction():
        assert await database.fetch_val(sa.text("SELECT 3")) == 3
