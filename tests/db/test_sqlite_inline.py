"""SQLite statements run on the event loop thread: the lock of another process is waited for asynchronously,
the wait is bounded by the busy timeout, and WAL checkpoints happen off the request path."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from minichat_host.db.engine import connect_database, is_unavailable_error, sqlite_path
from minichat_host.db.tables import chats

HOLD_LOCK = """
import sqlite3, sys, time
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
connection.execute("COMMIT")
"""


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the write lock for `seconds` (what a CLI command or a second server does)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "locked"
    return process


def _chat_row() -> dict[str, object]:
    now = dt.datetime.now(dt.UTC)
    return {
        "id": uuid.uuid4(),
        "tenant_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "model": "m",
        "title": "t",
        "is_temporary": False,
        "created_at": now,
        "updated_at": now,
    }


async def _ticks_during(work: asyncio.Future[object] | asyncio.Task[object]) -> int:
    """How often a 10 ms timer fired while `work` ran: the event loop kept running if it fired."""
    ticks = 0
    while not work.done():
        await asyncio.sleep(0.01)
        ticks += 1
    return ticks


async def test_a_write_waits_for_another_process_without_blocking_the_loop(
    sqlite_migrated_db_url: str,
) -> None:
    database = await connect_database(sqlite_migrated_db_url, sqlite_busy_timeout_ms=5000)
    holder = _hold_write_lock(sqlite_path(sqlite_migrated_db_url), 0.5)
    try:

        async def insert() -> object:
            async with database.transaction():
                return await database.execute(chats.insert().values(**_chat_row()))

        started = time.monotonic()
        task = asyncio.ensure_future(insert())
        ticks = await _ticks_during(task)
        await task
        waited = time.monotonic() - started
        assert holder.wait(timeout=10) == 0
        assert waited >= 0.4  # it did wait for the other process's lock...
        assert ticks >= 10  # ...while the event loop went on running other work
        assert await database.fetch_val(sa.select(sa.func.count()).select_from(chats)) == 1
    finally:
        holder.kill()
        await database.disconnect()


async def test_the_wait_is_bounded_by_the_busy_timeout(sqlite_migrated_db_url: str) -> None:
    database = await connect_database(sqlite_migrated_db_url, sqlite_busy_timeout_ms=300)
    holder = _hold_write_lock(sqlite_path(sqlite_migrated_db_url), 3)
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="database is locked") as raised:
            async with database.transaction():
                await database.execute(chats.insert().values(**_chat_row()))
        assert 0.25 <= time.monotonic() - started < 2.5
        assert is_unavailable_error(raised.value)  # answered as 503 database_unavailable by the API
        # Reads are not blocked by the writer (WAL) and the pool is usable afterwards.
        assert await database.fetch_val(sa.select(sa.func.count()).select_from(chats)) == 0
    finally:
        holder.kill()
        holder.wait()
        await database.disconnect()
    database = await connect_database(sqlite_migrated_db_url)
    try:
        await database.execute(chats.insert().values(**_chat_row()))
        assert await database.fetch_val(sa.select(sa.func.count()).select_from(chats)) == 1
    finally:
        await database.disconnect()


async def test_a_cancelled_task_leaves_no_transaction_behind(sqlite_migrated_db_url: str) -> None:
    # The statement itself cannot be interrupted any more; a task cancelled while it waits for the lock
    # gives its connection back at rest and the write lock to the next writer.
    database = await connect_database(sqlite_migrated_db_url, sqlite_busy_timeout_ms=5000)
    holder = _hold_write_lock(sqlite_path(sqlite_migrated_db_url), 0.3)
    try:

        async def insert() -> None:
            async with database.transaction():
                await database.execute(chats.insert().values(**_chat_row()))

        task = asyncio.ensure_future(insert())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert holder.wait(timeout=10) == 0
        async with asyncio.timeout(5):
            await insert()
        assert await database.fetch_val(sa.select(sa.func.count()).select_from(chats)) == 1
    finally:
        holder.kill()
        await database.disconnect()


async def test_wal_is_checkpointed_off_the_request_path(sqlite_migrated_db_url: str) -> None:
    path = sqlite_path(sqlite_migrated_db_url)
    database = await connect_database(sqlite_migrated_db_url)
    try:
        for _ in range(50):
            await database.execute(chats.insert().values(**_chat_row()))
        # The background checkpointer copies the WAL into the database file within about a second: a copy of
        # the database file alone (no -wal next to it) then holds every row.
        deadline = time.monotonic() + 10
        copy = path.with_name("copy.db")
        while True:
            shutil.copyfile(path, copy)
            probe = sqlite3.connect(copy)
            try:
                rows = probe.execute("SELECT count(*) FROM chats").fetchone()[0]
            finally:
                probe.close()
            if rows == 50:
                break
            assert time.monotonic() < deadline, rows
            await asyncio.sleep(0.1)
    finally:
        await database.disconnect()
