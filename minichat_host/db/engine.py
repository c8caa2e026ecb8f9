"""Opening the database: the `databases` pool used by the service, and SQLAlchemy async engines for Alembic.

Supported URLs: `sqlite+aiosqlite:////absolute/path.db` (four slashes for an absolute path) and
`postgresql+asyncpg://user:password@host:port/dbname`; `sqlite://` and `postgresql://` / `postgres://` are
accepted and mapped to those async drivers.

SQLite connections are `InlineConnection`s (sqlite_inline.py): statements run on the event loop's thread,
the wait for another process's lock is asynchronous, WAL checkpoints run on a thread of their own. Settings
applied to every pooled connection (databases 0.9 gives every task that touches the database its own
connection, so a one-off PRAGMA would not stick): `foreign_keys=ON`, `synchronous=NORMAL` (safe with WAL
against process crashes), a high `wal_autocheckpoint` (a safety valve only). WAL is a property of the
database file and is switched on once when the pool connects. databases 0.9 would open and close a
connection around every query; the pool here keeps up to `max_size` idle connections for the next task.
Every write of the process runs on one more connection, the writer, behind an in-process write gate
(`_SQLiteWriter`), and so do statements outside a transaction while no one writes (the outbox's raw reads
excepted): SQLite drops a connection's page cache whenever another connection committed, so the one
connection that does all the committing keeps its own.
Rows come back as `LeanRecord`s; statements are compiled once (compiled.py) or prepared (prepared.py).
Root transactions start with `BEGIN IMMEDIATE`: a deferred transaction that reads and then writes fails at
once with "database is locked" when another connection committed in between (the busy timeout does not apply
to that case), while IMMEDIATE takes the write lock up front and waits for it under the busy timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import sqlite3
import weakref
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import asyncpg
import databases
import msgspec
import sqlalchemy as sa
from databases.backends.common.records import Record, Row, create_column_maps
from databases.backends.postgres import PostgresBackend, PostgresConnection
from databases.backends.sqlite import (
    CompilationContext,
    SQLiteBackend,
    SQLiteConnection,
    SQLitePool,
    SQLiteTransaction,
)
from databases.core import _ACTIVE_TRANSACTIONS, Connection, DatabaseURL, Transaction
from databases.interfaces import Record as RecordInterface
from databases.interfaces import TransactionBackend
from sqlalchemy.engine import make_url
from sqlalchemy.engine.cursor import CursorResultMetaData
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import ClauseElement

from minichat_host.db.compiled import CachedStatement, StatementCache
from minichat_host.db.prepared import CompiledForm, Mode, Prepared, bind_args, prime
from minichat_host.db.sqlite_inline import AUTOCHECKPOINT_SAFETY_PAGES, InlineConnection, WalCheckpointer

if TYPE_CHECKING:
    from minichat_host.db.repos.json_rows import JsonRows

logger = logging.getLogger(__name__)

DialectName = Literal["sqlite", "postgresql"]

SQLITE_DRIVER_SCHEME: Final = "sqlite+aiosqlite"
POSTGRES_DRIVER_SCHEME: Final = "postgresql+asyncpg"

_URL_HELP = "use sqlite+aiosqlite:////absolute/path.db or postgresql+asyncpg://user@host:port/dbname"


def dialect_name(url: str) -> DialectName:
    """'sqlite' or 'postgresql' for a database URL; ValueError for anything else."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ValueError(f"not a database URL: {masked_url(url)!r} ({_URL_HELP})") from None
    if backend == "sqlite":
        return "sqlite"
    if backend in ("postgresql", "postgres"):
        return "postgresql"
    raise ValueError(f"unsupported database {backend!r} in {masked_url(url)!r} ({_URL_HELP})")


def async_driver_url(url: str) -> str:
    """The URL with its async driver spelled out (what both `databases` and SQLAlchemy async accept)."""
    dialect = dialect_name(url)
    scheme, rest = url.split("://", 1)
    wanted = SQLITE_DRIVER_SCHEME if dialect == "sqlite" else POSTGRES_DRIVER_SCHEME
    if scheme != wanted and "+" in scheme:
        raise ValueError(f"unsupported driver {scheme!r} in {masked_url(url)!r} ({_URL_HELP})")
    return f"{wanted}://{rest}"


def sqlite_path(url: str) -> Path:
    """The file of a SQLite URL; in-memory databases are rejected (each connection would see its own)."""
    if dialect_name(url) != "sqlite":
        raise ValueError(f"not a SQLite URL: {masked_url(url)!r}")
    database = make_url(url).database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in url:
        raise ValueError(
            "in-memory SQLite is not supported: every pooled connection would see its own database"
        )
    return Path(database)


def masked_url(url: str) -> str:
    """The URL with its password replaced by '***' (for logs and CLI output)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


# --- the `databases` pool -------------------------------------------------------------------------------


# The value types databases' Record hands to a result processor (a tuple: `int | str | float` would build a
# union object on every check, ~0.27 µs).
_PROCESSED_TYPES: Final = (int, str, float)


class _PragmaSQLitePool(SQLitePool):
    """SQLitePool of `InlineConnection`s (sqlite_inline.py) that runs the connection PRAGMAs on every
    connection it opens and keeps up to `max_idle` idle ones for the next task."""

    def __init__(
        self,
        url: DatabaseURL,
        pragmas: tuple[str, ...],
        *,
        max_idle: int,
        busy_timeout_seconds: float,
        **options: Any,
    ) -> None:
        super().__init__(url, **options)
        self._pragmas = pragmas
        self._max_idle = max_idle
        self._busy_timeout_seconds = busy_timeout_seconds
        self._idle: list[InlineConnection] = []

    async def acquire(self) -> InlineConnection:  # type: ignore[override]  # aiosqlite's interface, in place
        while self._idle:
            connection = self._idle.pop()
            if _reusable(connection):
                return connection
            connection.close_now()
        return self.open_connection()

    async def release(self, connection: InlineConnection) -> None:  # type: ignore[override]
        # Only a connection at rest goes back: a transaction left open (a failed rollback) is closed instead.
        if len(self._idle) < self._max_idle and _reusable(connection):
            self._idle.append(connection)
            return
        connection.close_now()

    async def close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close_now()

    def open_connection(self) -> InlineConnection:
        connection = InlineConnection.open(
            self._database, busy_timeout_seconds=self._busy_timeout_seconds, **self._options
        )
        try:
            for pragma in self._pragmas:
                connection.raw.execute(pragma).close()
        except BaseException:
            connection.close_now()  # never pooled half-configured
            raise
        return connection


def _reusable(connection: InlineConnection) -> bool:
    """Open and not inside a transaction."""
    try:
        return not connection.closed and not connection.in_transaction
    except sqlite3.ProgrammingError:  # closed underneath
        return False


class _WriteGate:
    """One write transaction at a time per database in this process, waiting in FIFO order.

    Writers queue here instead of in SQLite's busy handler, which polls the lock with sleeps of up to
    100 ms: a transaction now starts as soon as the previous one ended (bench/stream.py: BEGIN IMMEDIATE
    averaged 11.6 ms of waiting at 10 concurrent streams). The wait is bounded by the busy timeout and ends
    with SQLite's own "database is locked" error, as before; other processes still meet the busy handler.
    """

    def __init__(self, busy_timeout_ms: int) -> None:
        self._lock = asyncio.Lock()
        self._limit_seconds = busy_timeout_ms / 1000

    async def acquire(self) -> None:
        if not self._lock.locked():
            await self._lock.acquire()
            return
        try:
            async with asyncio.timeout(self._limit_seconds):
                await self._lock.acquire()
        except TimeoutError:
            raise sqlite3.OperationalError("database is locked") from None

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()


WRITER_CACHE_KIB: Final = 32 * 1024


class _SQLiteWriter:
    """The one connection every write of this process runs on, behind the write gate.

    SQLite drops a connection's whole page cache when it finds that another connection changed the
    database since its last transaction. With writes spread over the pooled connections, nearly every write
    transaction began by reading the B-tree pages it needed again (BEGIN IMMEDIATE 7 -> 26-43 µs and a
    12-statement body 81 -> 128-146 µs when two to four connections take turns, against one connection on
    its own). Writers already go one at a time through the gate; whoever holds the gate now also holds this
    connection, so its cache (and its sqlite3 statement cache) stays warm. The task's pooled connection is
    parked for the duration (`_ImmediateSQLiteConnection.start_writing`) and serves its reads again after.
    """

    def __init__(self, pool: _PragmaSQLitePool, busy_timeout_ms: int) -> None:
        self.gate = _WriteGate(busy_timeout_ms)
        self._pool = pool
        self._connection: InlineConnection | None = None

    async def take(self) -> InlineConnection:
        """The writer connection, once this task is through the gate (give it back with `give_back`)."""
        await self.gate.acquire()
        try:
            connection = self._connection
            if connection is None or not _reusable(connection):
                if connection is not None:
                    connection.close_now()
                    self._connection = None
                connection = self._connection = self._pool.open_connection()
                # Most reads land here too (while no one writes): the page cache the pooled connections
                # would have had between them.
                connection.raw.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}").close()
        except BaseException:
            self.gate.release()
            raise
        return connection

    def give_back(self) -> None:
        connection = self._connection
        try:
            if connection is not None and not connection.closed and connection.in_transaction:
                # Only after a failed COMMIT / ROLLBACK: never leave the next writer inside this transaction.
                try:
                    connection.raw.execute("ROLLBACK").close()
                except sqlite3.Error:
                    connection.close_now()
                    self._connection = None
        except sqlite3.ProgrammingError:  # closed underneath
            self._connection = None
        finally:
            self.gate.release()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close_now()
            self._connection = None


class _ImmediateSQLiteTransaction(SQLiteTransaction):
    def __init__(self, connection: _ImmediateSQLiteConnection) -> None:
        super().__init__(connection)
        self._holder = connection
        self._wrote = False  # this transaction took the writer (an outer scope may hold it already)

    async def start(self, is_root: bool, extra_options: dict[Any, Any]) -> None:
        options = dict(extra_options)
        first = options.pop("first_statement", None)  # see _PostgresTransaction; here just run after BEGIN
        holder = self._holder
        if not is_root:
            await super().start(is_root, options)
        else:
            self._wrote = await holder.start_writing()
            try:
                raw = holder._connection
                assert raw is not None, "Connection is not acquired"
                async with raw.execute("BEGIN IMMEDIATE") as cursor:
                    await cursor.close()
            except BaseException:
                self._stop_writing()
                raise
            self._is_root = True
        if first is not None:
            try:
                async with holder._connection.execute(first) as cursor:  # type: ignore[union-attr]
                    await cursor.close()
            except BaseException:
                await self.rollback()
                raise

    async def commit(self) -> None:
        try:
            await super().commit()
        finally:
            if self._is_root:
                self._stop_writing()

    async def rollback(self) -> None:
        try:
            await super().rollback()
        finally:
            if self._is_root:
                self._stop_writing()

    def _stop_writing(self) -> None:
        if self._wrote:
            self._wrote = False
            self._holder.stop_writing()


class LeanRecord:
    """A result row: the values converted once by SQLAlchemy's result processors, addressed by column
    name, position or Column object through an index map shared by every row of the statement.

    databases' Record looks each key up in three maps and fetches the column type's processor again on
    every access; on the hot JSON endpoints that was ~15% of the server's CPU (bench/api.py, py-spy).
    """

    __slots__ = ("_index", "_row")

    def __init__(self, row: Row, index: dict[Any, int]) -> None:
        self._row = row
        self._index = index

    def __getitem__(self, key: Any) -> Any:
        index = self._index
        if not index:  # textual SQL: no result columns known up front, the row maps its own keys
            return self._row[key]
        try:
            return self._row[index[key]]
        except KeyError:
            if isinstance(key, str | int):
                raise
            return self._row[index[str(key)]]  # a Column: "table.column", as databases accepts

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def __len__(self) -> int:
        return len(self._row)

    def __iter__(self) -> Any:
        return iter(self.keys())  # as databases' Record: the column names

    def keys(self) -> list[str]:
        if not self._index:
            return list(self._row._fields)
        return [key for key in self._index if isinstance(key, str) and "." not in key]

    def values(self) -> list[Any]:
        return list(self._row)

    @property
    def _mapping(self) -> dict[str, Any]:
        return {key: self[key] for key in self.keys()}

    def __repr__(self) -> str:
        return f"LeanRecord({self._mapping!r})"


def _record_index(result_columns: Any) -> dict[Any, int]:
    """Every way databases lets a caller address a result column, mapped to its position."""
    by_name, by_position, by_full_name = create_column_maps(result_columns)
    index: dict[Any, int] = {}
    for maps in (by_full_name, by_position, by_name):
        for key, (position, _type) in maps.items():
            index[key] = position
    return index


def _sqlite_result_context(dialect: Dialect, compiled: Any) -> CompilationContext:
    """What CursorResultMetaData needs to match a compiled statement's columns to a cursor's."""
    execution_context: Any = dialect.execution_ctx_cls()
    execution_context.dialect = dialect
    execution_context.result_column_struct = (
        compiled._result_columns,
        compiled._ordered_columns,
        compiled._textual_ordered_columns,
        compiled._ad_hoc_textual,
        compiled._loose_column_name_matching,
    )
    return CompilationContext(execution_context)


async def run_inline_prepared(
    dialect: Dialect, connection: InlineConnection, prepared: Prepared, values: Mapping[str, Any], mode: Mode
) -> Any:
    """A prepared statement (db/prepared.py) on one SQLite connection: rows as `LeanRecord`s."""
    if mode == "values" and prepared.json_rows is not None:
        decoded = await _json_rows(dialect, connection, prepared.json_rows, values)
        if decoded is not None:
            return decoded
    form = prepared.form(dialect, prepared.column_keys(values))
    compiled: Any = form.compiled
    args = bind_args(form, compiled.positiontup or (), values)
    raw = connection.raw
    sql = compiled.string
    cursor = await connection.run(lambda: raw.execute(sql, args))
    try:
        if mode == "execute":
            return None
        if mode == "one":
            row = cursor.fetchone()
            if row is None:
                return None
            rows = [row]
        else:
            rows = cursor.fetchall()
        metadata, index = _form_metadata(dialect, form, cursor.description)
    finally:
        cursor.close()
    processors, keymap = metadata._processors, metadata._keymap
    if mode == "values":
        return [list(Row(metadata, processors, keymap, row)) for row in rows]
    records = [LeanRecord(Row(metadata, processors, keymap, row), index) for row in rows]
    return records[0] if mode == "one" else records


async def _json_rows(
    dialect: Dialect, connection: InlineConnection, rows: JsonRows, values: Mapping[str, Any]
) -> list[tuple[Any, ...]] | None:
    """The rows of a listing's JSON form (db/repos/json_rows.py); None when a value is not of its column's
    type, and the plain statement is to decide."""
    form = rows.prepared.form(dialect, None)
    compiled: Any = form.compiled
    args = bind_args(form, compiled.positiontup or (), values)
    raw = connection.raw
    sql = compiled.string
    cursor = await connection.run(lambda: raw.execute(sql, args))
    try:
        texts = cursor.fetchall()
    finally:
        cursor.close()
    try:
        return rows.decode(texts)
    except msgspec.DecodeError:  # ValidationError included
        logger.debug("%s: a value not of its column's type, read by the plain statement", rows.prepared.name)
        return None


def _form_metadata(dialect: Dialect, form: CompiledForm, description: Any) -> tuple[Any, dict[Any, int]]:
    cached: tuple[Any, dict[Any, int]] | None = form.derived.get("metadata")
    if cached is None:
        compiled: Any = form.compiled
        context = _sqlite_result_context(dialect, compiled)
        cached = CursorResultMetaData(context, description), _record_index(compiled._result_columns)  # type: ignore[arg-type]
        form.derived["metadata"] = cached
    return cached


class _ImmediateSQLiteConnection(SQLiteConnection):
    """BEGIN IMMEDIATE transactions; statements, column maps and result metadata from the shared cache."""

    def __init__(
        self, pool: SQLitePool, dialect: Dialect, statements: StatementCache, writer: _SQLiteWriter
    ) -> None:
        super().__init__(pool, dialect)
        self._statements = statements
        self._writer = writer
        self._connection: InlineConnection | None = None  # type: ignore[assignment]  # aiosqlite's interface
        self._parked: InlineConnection | None = None  # the pooled connection, while this one writes

    def transaction(self) -> _ImmediateSQLiteTransaction:
        return _ImmediateSQLiteTransaction(self)

    @property
    def writing(self) -> bool:
        return self._parked is not None

    async def start_writing(self) -> bool:
        """Through the write gate, statements from here on run on the writer connection (_SQLiteWriter);
        False when this connection writes already (an outer scope holds the gate and ends the writing)."""
        assert self._connection is not None, "Connection is not acquired"
        if self._parked is not None:
            return False
        writer = await self._writer.take()
        self._parked, self._connection = self._connection, writer
        return True

    def stop_writing(self) -> None:
        parked = self._parked
        if parked is None:
            return
        self._connection, self._parked = parked, None
        self._writer.give_back()

    async def release(self) -> None:
        self.stop_writing()  # only left on if the scope that started it never ended (a bug): never pool it
        await super().release()

    def _compile(self, query: ClauseElement) -> Any:
        return self._prepare(query)[:4]

    def _prepare(self, query: ClauseElement) -> tuple[str, list[Any], Any, Any, CachedStatement | None]:
        """(sql, args, result columns, compilation context, cache entry or None)."""
        hit = self._statements.lookup(query)
        if hit is None:
            sql, args, result_columns, context = cast(Any, super()._compile(query))  # 4 on SQLite
            return sql, args, result_columns, context, None
        entry, params = hit
        compiled = entry.compiled
        derived = entry.derived
        if not derived:
            derived["context"] = _sqlite_result_context(self._dialect, compiled)
        processors: Any = compiled._bind_processors
        args = [
            processors[name](params[name]) if name in processors else params[name]
            for name in compiled.positiontup or ()
        ]
        return compiled.string, args, compiled._result_columns, derived["context"], entry

    def _metadata(
        self, entry: CachedStatement | None, context: Any, description: Any, result_columns: Any
    ) -> tuple[Any, dict[Any, int]]:
        # The same SQL always has the same cursor description: build its result metadata and index once.
        if entry is not None:
            cached: tuple[Any, dict[Any, int]] | None = entry.derived.get("metadata")
            if cached is not None:
                return cached
        built = CursorResultMetaData(context, description), _record_index(result_columns)
        if entry is not None:
            entry.derived["metadata"] = built
        return built

    async def _borrow_writer(self) -> InlineConnection | None:
        """The writer connection for one statement when this connection does not write already and no one
        else does: its page cache is the one no other connection's commit drops (_SQLiteWriter), and the
        gate is held for the statement, so no transaction begins on it meanwhile. None: use our own."""
        if self._parked is None and not self._writer.gate.locked():
            return await self._writer.take()  # an unlocked gate is taken without suspending
        return None

    async def fetch_all(self, query: ClauseElement) -> list[LeanRecord]:  # type: ignore[override]
        assert self._connection is not None, "Connection is not acquired"
        sql, args, result_columns, context, entry = self._prepare(query)
        borrowed = await self._borrow_writer()
        try:
            connection = borrowed or self._connection
            raw = connection.raw
            cursor = await connection.run(lambda: raw.execute(sql, args))
            try:
                rows = cursor.fetchall()
                metadata, index = self._metadata(entry, context, cursor.description, result_columns)
            finally:
                cursor.close()
        finally:
            if borrowed is not None:
                self._writer.give_back()
        processors, keymap = metadata._processors, metadata._keymap
        return [LeanRecord(Row(metadata, processors, keymap, row), index) for row in rows]

    async def fetch_one(self, query: ClauseElement) -> LeanRecord | None:  # type: ignore[override]
        assert self._connection is not None, "Connection is not acquired"
        sql, args, result_columns, context, entry = self._prepare(query)
        borrowed = await self._borrow_writer()
        try:
            connection = borrowed or self._connection
            raw = connection.raw
            cursor = await connection.run(lambda: raw.execute(sql, args))
            try:
                row = cursor.fetchone()
                if row is None:
                    return None
                metadata, index = self._metadata(entry, context, cursor.description, result_columns)
            finally:
                cursor.close()
        finally:
            if borrowed is not None:
                self._writer.give_back()
        return LeanRecord(Row(metadata, metadata._processors, metadata._keymap, row), index)

    async def run_prepared(self, prepared: Prepared, values: Mapping[str, Any], mode: Mode) -> Any:
        assert self._connection is not None, "Connection is not acquired"
        borrowed = await self._borrow_writer()
        try:
            return await run_inline_prepared(
                self._dialect, borrowed or self._connection, prepared, values, mode
            )
        finally:
            if borrowed is not None:
                self._writer.give_back()

    async def execute(self, query: ClauseElement) -> Any:
        assert self._connection is not None, "Connection is not acquired"
        sql, args = self._prepare(query)[:2]
        borrowed = await self._borrow_writer()
        try:
            connection = borrowed or self._connection
            raw = connection.raw
            cursor = await connection.run(lambda: raw.execute(sql, args))
            try:
                # As databases: the new row's id for an INSERT, else the number of rows changed.
                return cursor.rowcount if cursor.lastrowid == 0 else cursor.lastrowid
            finally:
                cursor.close()
        finally:
            if borrowed is not None:
                self._writer.give_back()


class MinichatSQLiteBackend(SQLiteBackend):
    """databases' SQLite backend with per-connection PRAGMAs and BEGIN IMMEDIATE transactions."""

    def __init__(
        self,
        database_url: DatabaseURL | str,
        *,
        busy_timeout_ms: int = 5000,
        max_idle: int = 10,
        **options: Any,
    ) -> None:
        options.pop("timeout", None)  # the busy wait is asynchronous (sqlite_inline.py), bounded by this
        super().__init__(database_url, **options)
        if self._pool._memref is not None:
            self._pool._memref.close()
        pragmas = (
            "PRAGMA foreign_keys=ON",
            "PRAGMA synchronous=NORMAL",
            # Checkpoints run on WalCheckpointer's thread, not inside a request's COMMIT.
            f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_SAFETY_PAGES}",
        )
        self._pragma_pool = _PragmaSQLitePool(
            self._database_url,
            pragmas,
            max_idle=max(0, max_idle),
            busy_timeout_seconds=busy_timeout_ms / 1000,
            **self._options,
        )
        self._pool = self._pragma_pool
        self._statements = StatementCache(self._dialect)
        self._writer = _SQLiteWriter(self._pragma_pool, busy_timeout_ms)
        self._checkpointer = WalCheckpointer(self._pragma_pool._database, **self._options)

    async def connect(self) -> None:
        await super().connect()
        self._checkpointer.start()

    async def disconnect(self) -> None:
        self._checkpointer.stop()
        await self._pragma_pool.close_idle()
        self._writer.close()
        await super().disconnect()

    def connection(self) -> _ImmediateSQLiteConnection:
        return _ImmediateSQLiteConnection(self._pool, self._dialect, self._statements, self._writer)

    async def run_prepared_alone(self, prepared: Prepared, values: Mapping[str, Any], mode: Mode) -> Any:
        """A prepared statement outside any connection of the calling task: on the writer connection when no
        one writes (its page cache is the one that is never dropped; the gate is held for the statement, so
        no transaction can begin on it meanwhile), else on a pooled connection that goes straight back (what
        databases does too, through a `Connection` with three locks built per call)."""
        writer = self._writer
        if not writer.gate.locked():
            connection = await writer.take()  # as _ImmediateSQLiteConnection._borrow_writer
            try:
                return await run_inline_prepared(self._dialect, connection, prepared, values, mode)
            finally:
                writer.give_back()
        pool = self._pragma_pool
        connection = await pool.acquire()
        try:
            return await run_inline_prepared(self._dialect, connection, prepared, values, mode)
        finally:
            await pool.release(connection)


class _CachedPostgresConnection(PostgresConnection):
    """PostgresConnection with statements and column maps from the shared cache."""

    def __init__(
        self, database: MinichatPostgresBackend, dialect: Dialect, statements: StatementCache
    ) -> None:
        super().__init__(database, dialect)
        self._backend = database
        self._turns = database.turns
        self._statements = statements
        self._session_state = False
        self._holds_turn = False  # passed MinichatPostgresBackend's FIFO gate, to be given back on release
        self._savepoints = 0

    def transaction(self) -> _PostgresTransaction:
        return _PostgresTransaction(self)

    def next_savepoint(self) -> str:
        self._savepoints += 1
        return f"minichat_savepoint_{self._savepoints}"

    def _compile(self, query: ClauseElement) -> Any:
        return self._prepare(query)[:3]

    def _prepare(self, query: ClauseElement) -> tuple[str, list[Any], Any, Any]:
        """(sql with $n placeholders, args, result columns, column maps)."""
        hit = self._statements.lookup(query)
        if hit is None:
            sql, args, result_columns = super()._compile(query)
            return sql, args, result_columns, create_column_maps(result_columns)
        entry, params = hit
        compiled = entry.compiled
        derived = entry.derived
        if not derived:
            # As databases does: parameters numbered in the order of their sorted names.
            names = sorted(params)
            derived["names"] = names
            derived["sql"] = compiled.string % {name: f"${i}" for i, name in enumerate(names, start=1)}
            derived["column_maps"] = create_column_maps(compiled._result_columns)
        processors: Any = compiled._bind_processors
        args = [
            processors[name](params[name]) if name in processors else params[name]
            for name in derived["names"]
        ]
        return derived["sql"], args, compiled._result_columns, derived["column_maps"]

    async def fetch_all(self, query: ClauseElement) -> list[RecordInterface]:
        assert self._connection is not None, "Connection is not acquired"
        sql, args, result_columns, column_maps = self._prepare(query)
        rows = await self._connection.fetch(sql, *args)
        return [Record(row, result_columns, self._dialect, column_maps) for row in rows]

    async def fetch_one(self, query: ClauseElement) -> RecordInterface | None:
        assert self._connection is not None, "Connection is not acquired"
        sql, args, result_columns, column_maps = self._prepare(query)
        row = await self._connection.fetchrow(sql, *args)
        return None if row is None else Record(row, result_columns, self._dialect, column_maps)

    async def run_prepared(self, prepared: Prepared, values: Mapping[str, Any], mode: Mode) -> Any:
        assert self._connection is not None, "Connection is not acquired"
        form = prepared.form(self._dialect, prepared.column_keys(values))
        derived = form.derived
        if not derived:
            compiled: Any = form.compiled
            names = sorted(set(compiled.bind_names.values()))
            derived["names"] = names
            derived["sql"] = compiled.string % {name: f"${i}" for i, name in enumerate(names, start=1)}
            derived["index"] = _record_index(compiled._result_columns)
            # As databases' Record: a column type's result processor applies to int/str/float values only.
            derived["processors"] = [
                (position, processor)
                for position, entry in enumerate(compiled._result_columns)
                if (processor := entry.type._cached_result_processor(self._dialect, None)) is not None
            ]
        args = bind_args(form, derived["names"], values)
        if mode == "execute":
            await self._connection.execute(derived["sql"], *args)
            return None
        if mode == "one":
            row = await self._connection.fetchrow(derived["sql"], *args)
            return None if row is None else self._lean(row, derived)
        rows = await self._connection.fetch(derived["sql"], *args)
        if mode == "values":
            processors = derived["processors"]
            return [self._processed(row, processors) for row in rows]
        return [self._lean(row, derived) for row in rows]

    @staticmethod
    def _processed(row: Any, processors: list[tuple[int, Any]]) -> list[Any]:
        values = list(row)
        for position, processor in processors:
            raw = values[position]
            if isinstance(raw, _PROCESSED_TYPES):
                values[position] = processor(raw)
        return values

    @classmethod
    def _lean(cls, row: Any, derived: dict[str, Any]) -> LeanRecord:
        values = cls._processed(row, derived["processors"])
        return LeanRecord(values, derived["index"])  # type: ignore[arg-type]  # a list serves as the row

    async def acquire(self) -> None:
        await self._turns.acquire()
        try:
            assert self._connection is None, "Connection is already acquired"
            parked = self._backend.take_parked()
            if parked is not None:
                self._connection = parked
            else:
                await self._backend.release_stale_parked()
                await super().acquire()
        except BaseException:
            self._turns.release()
            raise
        self._holds_turn = True

    def keep_session_state(self) -> None:
        """This connection takes session-level state (an advisory lock): close it on release, not reuse it."""
        self._session_state = True

    async def release(self) -> None:
        # When the server went away, asyncpg's reset on release fails: it terminates the connection (its pool
        # slot is free again) and re-raises. databases would keep the dead reference, and every later acquire
        # of this task's connection would fail with "Connection is already acquired" - wedging long-lived
        # tasks (the outbox loops, the watchdog) until a restart. Forget it either way.
        try:
            if self._session_state and self._connection is not None:
                # Closed rather than reset with a query: one more await here could be cut off by a
                # cancellation (shutdown) before the connection went back, and the pool's close would then
                # wait for it forever. The pool opens a new connection when one is needed.
                with contextlib.suppress(Exception):  # a proxy asyncpg already took back raises
                    self._connection.terminate()
            proxy = self._connection
            if proxy is not None and self._backend.park(proxy):
                self._connection = None
            elif proxy is not None and _releases_in_place(self._database._pool, proxy):
                proxy._con._on_release()
                await proxy._holder.release(None)
                self._connection = None
            else:
                await super().release()
        finally:
            self._session_state = False
            self._connection = None
            if self._holds_turn:
                # After asyncpg took the connection back: whoever passes the gate next finds it there.
                self._holds_turn = False
                self._turns.release()


def _releases_in_place(pool: Any, proxy: Any) -> bool:
    """Whether asyncpg's release of this pooled connection would complete without suspending, so that it
    can run in place rather than through `Pool.release`.

    `Pool.release` shields the release: a task of its own, created, scheduled and then awaited, which is two
    more loop steps and a task for every statement run outside a transaction (the hot JSON endpoints' one
    read; a PostgreSQL microbenchmark of `SELECT 1`: ~20 µs of the ~50 the pool adds). The shield keeps a
    cancellation from cutting a release off half-way; a release that cannot suspend cannot be cut off.
    It suspends only to roll back an open transaction, wait for a query cancellation, close the connection
    (its query budget spent, or its pool generation expired) or run a reset query: none of which applies
    when this says yes. Should asyncpg's internals differ from what is read here, the answer is no.
    """
    try:
        holder = proxy._holder
        con = proxy._con
        if (
            con is None
            or holder._pool is not pool
            or holder._in_use is None
            or pool._reset is not _reset_session
        ):
            return False
        protocol = con._protocol
        return not (
            con.is_closed()
            or protocol.is_in_transaction()
            or con._top_xact is not None
            or protocol._is_cancelling()
            or protocol.queries_count >= holder._max_queries
            or holder._generation != pool._generation
            or pool._closing
        )
    except AttributeError:
        return False


class _PostgresTransaction(TransactionBackend):
    """A PostgreSQL transaction (or savepoint) opened, committed and rolled back with plain statements
    rather than asyncpg's `Transaction` object, so that its first statement can travel in BEGIN's round
    trip: `database.transaction(first_statement=sql)` sends `BEGIN; <sql>` as one simple query.

    A send's quota lock and a finalization's go out that way: a round trip less on each (they wait on a
    server that shares the machine's cores). `sql` is literal SQL without parameters. asyncpg's pool still
    rolls back a transaction left open on release.
    """

    def __init__(self, connection: _CachedPostgresConnection) -> None:
        self._connection = connection
        self._savepoint: str | None = None

    def _raw(self) -> asyncpg.Connection:
        raw = self._connection._connection
        assert raw is not None, "Connection is not acquired"
        return raw

    async def start(self, is_root: bool, extra_options: dict[Any, Any]) -> None:
        options = dict(extra_options)
        first = options.pop("first_statement", None)
        if options:
            raise TypeError(f"unsupported transaction options: {sorted(options)}")
        raw = self._raw()
        if is_root:
            opening = "BEGIN"
        else:
            self._savepoint = self._connection.next_savepoint()
            opening = f"SAVEPOINT {self._savepoint}"
        if first is None:
            await raw.execute(opening)
            return
        try:
            await raw.execute(f"{opening}; {first}")
        except Exception:
            # The opening may have run: undo it here rather than leave it to the pool's reset.
            if not raw.is_closed() and raw.is_in_transaction():
                with contextlib.suppress(Exception):
                    await raw.execute("ROLLBACK" if is_root else f"ROLLBACK TO SAVEPOINT {self._savepoint}")
            raise

    async def commit(self) -> None:
        await self._raw().execute(
            "COMMIT" if self._savepoint is None else f"RELEASE SAVEPOINT {self._savepoint}"
        )

    async def rollback(self) -> None:
        await self._raw().execute(
            "ROLLBACK" if self._savepoint is None else f"ROLLBACK TO SAVEPOINT {self._savepoint}"
        )


class MinichatPostgresBackend(PostgresBackend):
    """databases' PostgreSQL backend with the compiled-statement cache and first-come-first-served
    connection acquisition.

    asyncpg's pool hands connections out through an `asyncio.Queue`, whose `get` is not fair under load: a
    connection given back wakes the longest waiter, but a task that asks in the same loop step takes the
    connection first, and the woken waiter queues again at the back. At concurrency 64 on a pool of 10,
    requests were passed over again and again (bench/api.py on PostgreSQL: p50 16-25 ms, p99 41-179 ms).
    A FIFO semaphore of the pool's size in front of it (asyncio's semaphore lets no newcomer past a
    waiter) means the pool always has a connection for whoever passes it.
    """

    def __init__(self, database_url: DatabaseURL | str, **options: Any) -> None:
        super().__init__(database_url, **options)
        self._statements = StatementCache(self._dialect)
        # Turns at the pool: one per connection it may open.
        self.turns = asyncio.Semaphore(int(self._get_connection_kwargs().get("max_size", 10)))
        self._parked: list[Any] = []
        self._stale: list[Any] = []
        self._parking = True

    def connection(self) -> _CachedPostgresConnection:
        return _CachedPostgresConnection(self, self._dialect, self._statements)

    # --- parked connections ---------------------------------------------------------------------------
    # A connection given back idle is kept here, still acquired from asyncpg's pool, for the next one to
    # pass the turns gate. asyncpg's acquire and release of a pooled connection (its queue, the holder, a
    # proxy, a future and an inactivity timer each way) cost ~100k instructions a statement, 8-15% of a hot
    # JSON request (bench/api_instructions.py); handing a parked one over is a list pop. The gate still
    # bounds the connections in use to the pool's size: whoever passes it finds a parked connection or, when
    # none is parked, one free in asyncpg's pool (every parked one counts as in use there).
    # A connection is parked only when asyncpg's own release would do nothing but take it back (no
    # transaction, no cancellation, no close due, the empty reset: `_releases_in_place`), and taken from the
    # park only while that still holds (not closed by the server since, not expired). Parked connections are
    # not closed for inactivity: up to `pool_max_size` stay open, as an SQLAlchemy QueuePool's do.

    def take_parked(self) -> Any:
        """The most recently parked connection still fit for use, or None (the unfit ones wait in
        `_stale` for `release_stale_parked`)."""
        parked = self._parked
        while parked:
            proxy = parked.pop()
            if _releases_in_place(self._pool, proxy):
                return proxy
            self._stale.append(proxy)
        return None

    async def release_stale_parked(self) -> None:
        """Give the parked connections found unfit back to asyncpg's pool, which closes or resets them (its
        release is shielded: a cancellation here does not leave one half given back)."""
        pool: Any = self._pool
        while self._stale:
            await pool.release(self._stale.pop())

    def park(self, proxy: Any) -> bool:
        """Keep `proxy` for the next acquire instead of releasing it to asyncpg's pool; False when it is not
        fit for that (the caller releases it as before) or the backend is disconnecting."""
        if not self._parking or not _releases_in_place(self._pool, proxy):
            return False
        self._parked.append(proxy)
        return True

    async def connect(self) -> None:
        self._parking = True
        await super().connect()

    async def disconnect(self) -> None:
        # asyncpg's close waits for every connection in use to come back: the parked ones first.
        self._parking = False
        self._stale.extend(reversed(self._parked))
        self._parked.clear()
        await self.release_stale_parked()
        await super().disconnect()

    async def run_prepared_alone(self, prepared: Prepared, values: Mapping[str, Any], mode: Mode) -> Any:
        """A prepared statement outside any connection of the calling task: on a pooled connection that goes
        straight back (as databases would, without its `Connection` and three locks per call)."""
        connection = self.connection()
        await connection.acquire()
        try:
            return await connection.run_prepared(prepared, values, mode)
        finally:
            await connection.release()


class _ReleasingTransaction(Transaction):
    """databases' Transaction, except that the connection is given back even when BEGIN, COMMIT or
    ROLLBACK fails.

    databases 0.9 skips the release when the statement raises (the server went away mid-transaction): the
    task's connection count then never returns to zero, so that task keeps a dead connection for good - a
    long-lived task such as an outbox loop fails on every later query until a restart - and the pool waits
    for it forever at shutdown.
    """

    @property  # type: ignore[override]
    def _transaction(self) -> Any:
        transactions = _ACTIVE_TRANSACTIONS.get()
        return None if transactions is None else transactions.get(self)

    @_transaction.setter
    def _transaction(self, transaction: Any) -> None:
        # databases sets a copy of the context's transaction map on every start and end, and an empty copy
        # stays in the context after the last one ends: the request task and the pump of every open stream
        # kept one (~0.3 KiB each, bench/memory.py). No map is kept when no transaction is active.
        transactions = _ACTIVE_TRANSACTIONS.get()
        if transaction is None:
            if transactions is None or self not in transactions:
                return
            if len(transactions) == 1:  # the usual end: no copy of a map that would be left empty
                _ACTIVE_TRANSACTIONS.set(None)
                return
            transactions = transactions.copy()
            del transactions[self]
            _ACTIVE_TRANSACTIONS.set(transactions if len(transactions) else None)
            return
        transactions = weakref.WeakKeyDictionary() if transactions is None else transactions.copy()
        transactions[self] = transaction
        _ACTIVE_TRANSACTIONS.set(transactions)

    async def start(self) -> _ReleasingTransaction:
        connection = self._connection
        self._transaction = connection._connection.transaction()
        async with connection._transaction_lock:
            is_root = not connection._transaction_stack
            await connection.__aenter__()
            try:
                await self._transaction.start(is_root=is_root, extra_options=self._extra_options)
            except BaseException:
                self._transaction = None
                await connection.__aexit__()
                raise
            connection._transaction_stack.append(self)
        return self

    async def commit(self) -> None:
        await self._end(commit=True)

    async def rollback(self) -> None:
        await self._end(commit=False)

    async def _end(self, *, commit: bool) -> None:
        connection = self._connection
        async with connection._transaction_lock:
            assert connection._transaction_stack[-1] is self
            connection._transaction_stack.pop()
            backend = self._transaction
            assert backend is not None
            try:
                await (backend.commit() if commit else backend.rollback())
            finally:
                self._transaction = None
                await connection.__aexit__()


class _ReleasingConnection(Connection):
    # Entering a connection the task already holds only counts: databases does it under its connection
    # lock, two lock round trips per statement that the outbox's and the transactions' nested entries
    # pay ~26 times a turn. With the lock free, taking it would not suspend either, so the count moves
    # exactly as it would; acquiring the first hold and releasing the last still go through the lock.
    async def __aenter__(self) -> Connection:
        if self._connection_counter and not self._connection_lock.locked():
            self._connection_counter += 1
            return self
        return await super().__aenter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._connection_counter > 1 and not self._connection_lock.locked():
            self._connection_counter -= 1
            return
        await super().__aexit__(*exc_info)

    def transaction(self, *, force_rollback: bool = False, **kwargs: Any) -> _ReleasingTransaction:
        return _ReleasingTransaction(lambda: self, force_rollback, **kwargs)

    async def run_prepared(self, prepared: Prepared, values: Mapping[str, Any], mode: Mode) -> Any:
        """A prepared statement (db/prepared.py) on this task's connection, inside its transaction if any."""
        async with self:
            async with self._query_lock:
                backend: Any = self._connection
                return await backend.run_prepared(prepared, values, mode)


class _MinichatDatabase(databases.Database):
    SUPPORTED_BACKENDS = {
        **databases.Database.SUPPORTED_BACKENDS,
        SQLITE_DRIVER_SCHEME: f"{__name__}:MinichatSQLiteBackend",
        "sqlite": f"{__name__}:MinichatSQLiteBackend",
        POSTGRES_DRIVER_SCHEME: f"{__name__}:MinichatPostgresBackend",
        "postgresql": f"{__name__}:MinichatPostgresBackend",
    }

    # As databases.Database, with the transaction above on both ways in (database and connection), and
    # one lookup of the task's connection where databases' property makes two (each a weak reference built
    # for the map): the repositories and the outbox ask for it around every statement.
    def connection(self) -> Connection:
        if self._global_connection is not None:
            return self._global_connection
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("No currently active asyncio.Task found")
        connection_map = self._connection_map
        connection = connection_map.get(task)
        if connection is None:
            connection = connection_map[task] = _ReleasingConnection(self, self._backend)
        return connection

    def transaction(self, *, force_rollback: bool = False, **kwargs: Any) -> _ReleasingTransaction:
        return _ReleasingTransaction(self.connection, force_rollback, **kwargs)

    async def run_prepared(self, prepared: Prepared, values: Mapping[str, Any], mode: Mode) -> Any:
        backend: Any = self._backend
        if self._global_connection is None:
            # databases' per-statement bookkeeping (a Connection with three locks, built, acquired and
            # released around each statement outside a transaction) was most of a prepared statement's
            # cost on SQLite, which runs statements in place: 61 µs against 12 for the query itself (36 in
            # a transaction). The task's own connection, when it holds one, is used as databases would.
            task = asyncio.current_task()
            held: Any = self._connection_map.get(task) if task is not None else None
            if held is None:
                return await backend.run_prepared_alone(prepared, values, mode)
            if held._connection_counter and not held._query_lock.locked():
                return await held._connection.run_prepared(prepared, values, mode)
        connection: Any = self.connection()
        return await connection.run_prepared(prepared, values, mode)


@contextlib.asynccontextmanager
async def sqlite_writes(database: databases.Database) -> AsyncIterator[None]:
    """SQLite: this task's statements in the block run on the writer connection, one writer at a time in
    this process (the write gate), each committing on its own (the outbox's lease and ack, which need no
    transaction). A transaction begun inside joins the same turn. PostgreSQL: nothing to wait for."""
    if not isinstance(database._backend, MinichatSQLiteBackend):
        yield
        return
    async with database.connection() as connection:
        holder: Any = connection._connection
        started = await holder.start_writing()
        try:
            yield
        finally:
            if started:
                holder.stop_writing()


async def connect_database(
    url: str, *, min_size: int = 1, max_size: int = 10, sqlite_busy_timeout_ms: int = 5000
) -> databases.Database:
    """A connected `databases.Database` for a SQLite or PostgreSQL URL (the caller disconnects it).

    SQLite: the parent directory is created, WAL is switched on, each connection gets the PRAGMAs above and
    up to `max_size` idle connections are kept for reuse.
    PostgreSQL: an asyncpg pool of `min_size`..`max_size` connections.
    """
    url = async_driver_url(url)
    database: databases.Database
    if dialect_name(url) == "sqlite":
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        database = _MinichatDatabase(url, busy_timeout_ms=sqlite_busy_timeout_ms, max_idle=max_size)
        await database.connect()
        try:
            await _enable_wal(database, path)
        except BaseException:
            await database.disconnect()
            raise
        return database
    max_size = max(1, max_size)
    database = _MinichatDatabase(
        url, min_size=max(0, min(min_size, max_size)), max_size=max_size, reset=_reset_session
    )
    await database.connect()
    return database


def prime_statements(database: databases.Database) -> int:
    """Compile the prepared statements built so far for this database's dialect (db/prepared.py `prime`),
    so that a fresh process's first requests do not compile them; the number compiled."""
    backend: Any = database._backend
    return prime(backend._dialect)


async def _reset_session(connection: asyncpg.Connection) -> None:
    """The pool's reset of a connection given back: nothing beyond asyncpg's own (an open transaction is
    rolled back, listeners are dropped).

    asyncpg's default runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every
    release - and databases releases after every statement outside a transaction, so each of those cost two
    round trips (a turn's start on PostgreSQL made ~10 of them). minichat sets no session variables, opens
    no cursors and LISTENs nowhere; the one session-level lock (the orphan watchdog's, once a minute) is
    taken on a connection marked with `keep_session_state`, which is closed on release instead of reused.
    """


def keep_session_state(connection: Connection) -> None:
    """Mark the task's PostgreSQL connection (inside `async with database.connection()`) as taking
    session-level state, so it is closed instead of going back to the pool; a no-op on SQLite."""
    backend = connection._connection
    if isinstance(backend, _CachedPostgresConnection):
        backend.keep_session_state()


async def _enable_wal(database: databases.Database, path: Path) -> None:
    async with database.connection() as connection:
        mode = await connection.fetch_val(sa.text("PRAGMA journal_mode=WAL"))
    if str(mode).lower() != "wal":
        # e.g. a network file system; SQLite still works, only readers and the writer block each other.
        logger.warning("SQLite database %s could not switch to WAL (journal_mode=%s)", path, mode)


# --- SQLAlchemy async engines (Alembic, schema inspection) ------------------------------------------------


def create_async_sa_engine(url: str) -> AsyncEngine:
    """A SQLAlchemy AsyncEngine without pooling; on SQLite DDL and DML get real transactions.

    pysqlite/aiosqlite normally leave DDL outside any transaction; SQLAlchemy's documented recipe hands
    BEGIN to SQLAlchemy so a failed migration rolls back as a whole. Foreign keys stay OFF here on
    purpose: Alembic's batch mode on SQLite copies and drops tables, which with ON would cascade deletes.
    """
    url = async_driver_url(url)
    engine = create_async_engine(url, poolclass=NullPool)
    if dialect_name(url) == "sqlite":
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _no_driver_begin(dbapi_connection: Any, connection_record: Any) -> None:
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine.sync_engine, "begin")
        def _emit_begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


# --- classifying errors --------------------------------------------------------------------------------

INTEGRITY_ERRORS: Final = (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)
"""What a constraint violation raises through `databases` (driver exceptions, not SQLAlchemy's)."""


def is_unique_violation(exc: BaseException) -> bool:
    """True for a unique / primary-key violation (e.g. the one-running-turn index) on either engine."""
    for current in _chain(exc):
        if isinstance(current, asyncpg.UniqueViolationError):
            return True
        if isinstance(current, sqlite3.IntegrityError) and getattr(current, "sqlite_errorname", "") in (
            "SQLITE_CONSTRAINT_UNIQUE",
            "SQLITE_CONSTRAINT_PRIMARYKEY",
        ):
            return True
    return False


def is_foreign_key_violation(exc: BaseException) -> bool:
    """True for a foreign-key violation on either engine."""
    for current in _chain(exc):
        if isinstance(current, asyncpg.ForeignKeyViolationError):
            return True
        if isinstance(current, sqlite3.IntegrityError) and (
            getattr(current, "sqlite_errorname", "") == "SQLITE_CONSTRAINT_FOREIGNKEY"
        ):
            return True
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes: chained exceptions, the wrapped driver error, exception-group members."""
    seen: set[int] = set()
    found: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        if isinstance(current, DBAPIError) and isinstance(current.orig, BaseException):
            pending.append(current.orig)
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        # Follow implicit chaining the way tracebacks show it: not after `raise ... from None`.
        if current.__context__ is not None and not current.__suppress_context__:
            pending.append(current.__context__)
    return found


# --- "the database is not there" ------------------------------------------------------------------------

_UNAVAILABLE_ERRNOS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.ETIMEDOUT,
    }
)
# Connection exceptions (08), operator intervention such as shutdown (57P01-57P04), too many connections.
_UNAVAILABLE_SQLSTATE_PREFIXES: Final = ("08", "57P", "53300")
_UNAVAILABLE_MESSAGES: Final = (
    "connection is closed",
    "connection was closed",
    "pool is closed",
    "pool is closing",
    "no active connection",
    "connection closed",
    # asyncpg detaches a pooled connection's proxy when the server closes the socket; minichat drops its
    # own reference on every release, so a query through a detached proxy means the connection died.
    "released back to the pool",
    "databasebackend is not running",
    "database is locked",
    "unable to open database file",
)


def is_unavailable_error(exc: BaseException) -> bool:
    """True when `exc` (or anything it was raised from) means the database cannot be reached right now.

    Covers refused / reset / dropped connections, a PostgreSQL server that is starting, shutting down or
    out of connection slots, a closed pool, and a SQLite file that stays locked past the busy timeout or
    cannot be opened. Query errors (constraint violations, syntax, timeouts of a statement) are not.
    """
    return any(_is_unavailable_one(current) for current in _chain(exc))


def _is_unavailable_one(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError | socket.gaierror):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)
    if isinstance(exc, OSError) and exc.errno in _UNAVAILABLE_ERRNOS:
        return True
    if isinstance(exc, asyncpg.InterfaceError | sqlite3.OperationalError | ValueError | AssertionError):
        message = str(exc).lower()
        return any(fragment in message for fragment in _UNAVAILABLE_MESSAGES)
    return False
