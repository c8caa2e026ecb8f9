"""SQLite connections that run statements on the event loop's thread, with an asynchronous busy wait.

aiosqlite runs every statement on a worker thread per connection and hands rows back through the event
loop; the sqlite3 module releases the GIL around every `sqlite3_step`, so a 20-row page re-acquired the
GIL twenty times against a busy event loop thread (py-spy: the worker threads sat in
`pthread_cond_timedwait` inside `_pysqlite_fetch_one_row`, and list chats answered ~400 req/s for a
0.1 ms query). The statements minichat runs are indexed lookups and short writes: running them in place
costs less than one thread hop, and a statement cannot be cancelled half-way any more.

What used to block on a thread is made asynchronous instead:
- The lock: connections are opened without a busy handler (`timeout=0`); a statement that meets another
  process's write lock (`SQLITE_BUSY`) is retried after `asyncio.sleep` with backoff until the busy timeout,
  then fails with SQLite's own "database is locked". Writers of this process already queue in asyncio
  (engine.py `_WriteGate`), so only other processes (the CLI, a second server) are ever waited for here.
- Checkpoints: the committing connection would otherwise run the WAL auto-checkpoint (and its fsync) in
  the middle of a request; `WalCheckpointer` runs passive checkpoints on its own thread instead, and the
  auto-checkpoint threshold is raised to a safety valve only.

The classes below offer the subset of aiosqlite's interface that `databases` and the outbox's raw SQL use
(`execute` as an awaitable / async context manager, `cursor()`, `fetchall`, `fetchone`, `description`,
`lastrowid`, `rowcount`, async iteration).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, Final, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

_BUSY_CODES: Final = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_FIRST_BACKOFF_SECONDS: Final = 0.001
_MAX_BACKOFF_SECONDS: Final = 0.05
# Pages (4 KiB) of WAL after which a committing connection checkpoints by itself after all: only reached
# when the checkpointer thread cannot keep up or is not running (e.g. a CLI process).
AUTOCHECKPOINT_SAFETY_PAGES: Final = 10_000
CHECKPOINT_INTERVAL_SECONDS: Final = 1.0


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY_CODES
    return "database is locked" in str(exc)


class InlineCursor:
    """A sqlite3 cursor behind aiosqlite's cursor interface; every call completes without suspending."""

    __slots__ = ("_connection", "_cursor")

    def __init__(self, connection: InlineConnection, cursor: sqlite3.Cursor) -> None:
        self._connection = connection
        self._cursor = cursor

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        cursor = self._cursor
        await self._connection.run(lambda: cursor.execute(sql, parameters))
        return self

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def close(self) -> None:
        self._cursor.close()

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._cursor.close()

    async def __aiter__(self) -> AsyncIterator[Any]:
        for row in self._cursor:
            yield row


class _PendingStatement:
    """What `InlineConnection.execute` returns: awaitable (the cursor) and an async context manager (the
    cursor, closed on exit), as aiosqlite's."""

    __slots__ = ("_connection", "_cursor", "_parameters", "_sql")

    def __init__(self, connection: InlineConnection, sql: str, parameters: Sequence[Any]) -> None:
        self._connection = connection
        self._sql = sql
        self._parameters = parameters
        self._cursor: InlineCursor | None = None

    def __await__(self) -> Generator[Any, None, InlineCursor]:
        return self._run().__await__()

    async def _run(self) -> InlineCursor:
        raw = self._connection.raw
        sql, parameters = self._sql, self._parameters
        cursor = await self._connection.run(lambda: raw.execute(sql, parameters))
        return InlineCursor(self._connection, cursor)

    async def __aenter__(self) -> InlineCursor:
        self._cursor = await self._run()
        return self._cursor

    async def __aexit__(self, *exc_info: object) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class InlineConnection:
    """One sqlite3 connection used from the event loop thread (see the module docstring)."""

    def __init__(self, raw: sqlite3.Connection, *, busy_timeout_seconds: float) -> None:
        self.raw = raw
        self._busy_timeout_seconds = busy_timeout_seconds
        self._closed = False

    @classmethod
    def open(cls, database: str, *, busy_timeout_seconds: float, **options: Any) -> InlineConnection:
        options.pop("timeout", None)
        # No busy handler (timeout=0): the wait for another process's lock happens in `run`, asynchronously.
        # check_same_thread=False: the event loop owns the connection, but the loop's default executor may
        # close it when a process exits without disconnecting.
        raw = sqlite3.connect(database, isolation_level=None, timeout=0, check_same_thread=False, **options)
        return cls(raw, busy_timeout_seconds=busy_timeout_seconds)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` now; when SQLite answers busy, again after an asynchronous backoff (busy timeout)."""
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        deadline = time.monotonic() + self._busy_timeout_seconds
        delay = _FIRST_BACKOFF_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                return work()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            delay = min(delay * 2, _MAX_BACKOFF_SECONDS)

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _PendingStatement:
        return _PendingStatement(self, sql, parameters)

    def cursor(self) -> _CursorContext:
        return _CursorContext(self)

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self.raw.close()


class _CursorContext:
    __slots__ = ("_connection", "_cursor")

    def __init__(self, connection: InlineConnection) -> None:
        self._connection = connection
        self._cursor: InlineCursor | None = None

    async def __aenter__(self) -> InlineCursor:
        self._cursor = InlineCursor(self._connection, self._connection.raw.cursor())
        return self._cursor

    async def __aexit__(self, *exc_info: object) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class WalCheckpointer:
    """Passive WAL checkpoints every `interval` seconds on a thread of their own (a no-op when the WAL holds
    nothing new, so the timer needs no bookkeeping of writes)."""

    def __init__(
        self, database: str, *, interval: float = CHECKPOINT_INTERVAL_SECONDS, **options: Any
    ) -> None:
        self._database = database
        self._interval = interval
        self._options = {key: value for key, value in options.items() if key != "timeout"}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="minichat-sqlite-checkpoint", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)

    def _loop(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self._interval):
                try:
                    if connection is None:
                        connection = sqlite3.connect(
                            self._database, isolation_level=None, timeout=1, **self._options
                        )
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:
                    logger.warning("SQLite WAL checkpoint failed; trying again", exc_info=True)
                    if connection is not None:
                        with contextlib.suppress(sqlite3.Error):
                            connection.close()
                        connection = None
        finally:
            if connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
