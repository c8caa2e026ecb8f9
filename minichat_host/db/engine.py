"""Opening the database: the `databases` pool used by the service, and SQLAlchemy async engines for Alembic.

Supported URLs: `sqlite+aiosqlite:////absolute/path.db` (four slashes for an absolute path) and
`postgresql+asyncpg://user:password@host:port/dbname`; `sqlite://` and `postgresql://` / `postgres://` are
accepted and mapped to those async drivers.

SQLite settings applied to every pooled connection (databases 0.9 gives every task that touches the database
its own aiosqlite connection, each on its own thread, so a one-off PRAGMA would not stick):
`foreign_keys=ON`, `busy_timeout`, `synchronous=NORMAL` (safe with WAL against process crashes). WAL is a
property of the database file and is switched on once when the pool connects. databases 0.9 would open and
close a connection (a thread, the file, the PRAGMAs: about 1 ms) around every query; the pool here keeps up
to `max_size` idle connections for the next task instead (bench/stream.py and bench/api.py measure it).
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
import threading
from pathlib import Path
from typing import Any, Final, Literal, cast

import aiosqlite
import asyncpg
import databases
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
from databases.core import Connection, DatabaseURL, Transaction
from databases.interfaces import Record as RecordInterface
from sqlalchemy.engine import make_url
from sqlalchemy.engine.cursor import CursorResultMetaData
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import ClauseElement

from minichat_host.db.compiled import CachedStatement, StatementCache

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


class _PragmaSQLitePool(SQLitePool):
    """SQLitePool that runs the connection PRAGMAs on every connection it opens and reuses idle ones."""

    def __init__(self, url: DatabaseURL, pragmas: tuple[str, ...], *, max_idle: int, **options: Any) -> None:
        super().__init__(url, **options)
        self._pragmas = pragmas
        self._max_idle = max_idle
        self._idle: list[aiosqlite.Connection] = []

    async def acquire(self) -> aiosqlite.Connection:
        while self._idle:
            connection = self._idle.pop()
            if _reusable(connection):
                return connection
            await super().release(connection)
        return await self._open()

    async def release(self, connection: aiosqlite.Connection) -> None:
        # Only a connection at rest goes back: a transaction left open (a failed rollback) is closed instead.
        if len(self._idle) < self._max_idle and _reusable(connection):
            self._idle.append(connection)
            return
        await super().release(connection)

    async def close_idle(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(Exception):
                await super().release(connection)

    async def _open(self) -> aiosqlite.Connection:
        # As SQLitePool.acquire, plus: when opening fails, aiosqlite stops its worker thread without waiting
        # for it, and the thread then reports to an event loop that may already be closed; wait for it here.
        connection = aiosqlite.connect(database=self._database, isolation_level=None, **self._options)
        worker = getattr(connection, "_thread", None)
        if isinstance(worker, threading.Thread):
            # An idle pooled connection that nobody closes (no disconnect) must not keep the process alive at
            # exit; leaving a WAL database without closing it is as safe as a crash.
            worker.daemon = True
        try:
            await connection.__aenter__()
        except BaseException:
            if isinstance(worker, threading.Thread) and worker.is_alive():
                await asyncio.to_thread(worker.join, 5)
            raise
        try:
            for pragma in self._pragmas:
                cursor = await connection.execute(pragma)
                await cursor.close()
        except BaseException:
            await super().release(connection)  # closed, never pooled half-configured
            raise
        return connection


def _reusable(connection: aiosqlite.Connection) -> bool:
    """Open, its worker thread alive, and not inside a transaction."""
    try:
        return bool(connection._running) and not connection.in_transaction
    except (ValueError, sqlite3.ProgrammingError):  # closed underneath
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


class _ImmediateSQLiteTransaction(SQLiteTransaction):
    def __init__(self, connection: _ImmediateSQLiteConnection, gate: _WriteGate) -> None:
        super().__init__(connection)
        self._gate = gate

    async def start(self, is_root: bool, extra_options: dict[Any, Any]) -> None:
        if not is_root:
            await super().start(is_root, extra_options)
            return
        raw = self._connection._connection
        assert raw is not None, "Connection is not acquired"
        await self._gate.acquire()
        try:
            async with raw.execute("BEGIN IMMEDIATE") as cursor:
                await cursor.close()
        except BaseException:
            self._gate.release()
            raise
        self._is_root = True

    async def commit(self) -> None:
        try:
            await super().commit()
        finally:
            if self._is_root:
                self._gate.release()

    async def rollback(self) -> None:
        try:
            await super().rollback()
        finally:
            if self._is_root:
                self._gate.release()


class _ImmediateSQLiteConnection(SQLiteConnection):
    """BEGIN IMMEDIATE transactions; statements, column maps and result metadata from the shared cache."""

    def __init__(
        self, pool: SQLitePool, dialect: Dialect, statements: StatementCache, gate: _WriteGate
    ) -> None:
        super().__init__(pool, dialect)
        self._statements = statements
        self._gate = gate

    def transaction(self) -> _ImmediateSQLiteTransaction:
        return _ImmediateSQLiteTransaction(self, self._gate)

    def _compile(self, query: ClauseElement) -> Any:
        return self._prepare(query)[:4]

    def _prepare(self, query: ClauseElement) -> tuple[str, list[Any], Any, Any, Any, CachedStatement | None]:
        """(sql, args, result columns, compilation context, column maps, cache entry or None)."""
        hit = self._statements.lookup(query)
        if hit is None:
            sql, args, result_columns, context = cast(Any, super()._compile(query))  # 4 on SQLite
            return sql, args, result_columns, context, create_column_maps(result_columns), None
        entry, params = hit
        compiled = entry.compiled
        derived = entry.derived
        if not derived:
            execution_context: Any = self._dialect.execution_ctx_cls()
            execution_context.dialect = self._dialect
            execution_context.result_column_struct = (
                compiled._result_columns,
                compiled._ordered_columns,
                compiled._textual_ordered_columns,
                compiled._ad_hoc_textual,
                compiled._loose_column_name_matching,
            )
            derived["context"] = CompilationContext(execution_context)
            derived["column_maps"] = create_column_maps(compiled._result_columns)
        processors: Any = compiled._bind_processors
        args = [
            processors[name](params[name]) if name in processors else params[name]
            for name in compiled.positiontup or ()
        ]
        return (
            compiled.string,
            args,
            compiled._result_columns,
            derived["context"],
            derived["column_maps"],
            entry,
        )

    def _metadata(self, entry: CachedStatement | None, context: Any, description: Any) -> Any:
        # The same SQL always has the same cursor description: build its result metadata once.
        metadata: CursorResultMetaData | None = entry.derived.get("metadata") if entry else None
        if metadata is None:
            metadata = CursorResultMetaData(context, description)
            if entry is not None:
                entry.derived["metadata"] = metadata
        return metadata

    async def fetch_all(self, query: ClauseElement) -> list[Record]:  # type: ignore[override]  # databases: its own two Record types
        assert self._connection is not None, "Connection is not acquired"
        sql, args, result_columns, context, column_maps, entry = self._prepare(query)
        async with self._connection.execute(sql, args) as cursor:
            rows = await cursor.fetchall()
            metadata = self._metadata(entry, context, cursor.description)
        processors, keymap = metadata._processors, metadata._keymap
        return [
            Record(Row(metadata, processors, keymap, row), result_columns, self._dialect, column_maps)
            for row in rows
        ]

    async def fetch_one(self, query: ClauseElement) -> Record | None:
        assert self._connection is not None, "Connection is not acquired"
        sql, args, result_columns, context, column_maps, entry = self._prepare(query)
        async with self._connection.execute(sql, args) as cursor:
            row = await cursor.fetchone()
            if row is None:
                return None
            metadata = self._metadata(entry, context, cursor.description)
        record = Row(metadata, metadata._processors, metadata._keymap, row)
        return Record(record, result_columns, self._dialect, column_maps)


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
        # sqlite3's own `timeout` is the busy timeout too; keep both in agreement.
        options.setdefault("timeout", busy_timeout_ms / 1000)
        super().__init__(database_url, **options)
        if self._pool._memref is not None:
            self._pool._memref.close()
        pragmas = (
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={int(busy_timeout_ms)}",
            "PRAGMA synchronous=NORMAL",
        )
        self._pragma_pool = _PragmaSQLitePool(
            self._database_url, pragmas, max_idle=max(0, max_idle), **self._options
        )
        self._pool = self._pragma_pool
        self._statements = StatementCache(self._dialect)
        self._gate = _WriteGate(busy_timeout_ms)

    async def disconnect(self) -> None:
        await self._pragma_pool.close_idle()
        await super().disconnect()

    def connection(self) -> _ImmediateSQLiteConnection:
        return _ImmediateSQLiteConnection(self._pool, self._dialect, self._statements, self._gate)


class _CachedPostgresConnection(PostgresConnection):
    """PostgresConnection with statements and column maps from the shared cache."""

    def __init__(self, database: PostgresBackend, dialect: Dialect, statements: StatementCache) -> None:
        super().__init__(database, dialect)
        self._statements = statements

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

    async def release(self) -> None:
        # When the server went away, asyncpg's reset on release fails: it terminates the connection (its pool
        # slot is free again) and re-raises. databases would keep the dead reference, and every later acquire
        # of this task's connection would fail with "Connection is already acquired" - wedging long-lived
        # tasks (the outbox loops, the watchdog) until a restart. Forget it either way.
        try:
            await super().release()
        finally:
            self._connection = None


class MinichatPostgresBackend(PostgresBackend):
    """databases' PostgreSQL backend with the compiled-statement cache."""

    def __init__(self, database_url: DatabaseURL | str, **options: Any) -> None:
        super().__init__(database_url, **options)
        self._statements = StatementCache(self._dialect)

    def connection(self) -> _CachedPostgresConnection:
        return _CachedPostgresConnection(self, self._dialect, self._statements)


class _ReleasingTransaction(Transaction):
    """databases' Transaction, except that the connection is given back even when BEGIN, COMMIT or
    ROLLBACK fails.

    databases 0.9 skips the release when the statement raises (the server went away mid-transaction): the
    task's connection count then never returns to zero, so that task keeps a dead connection for good - a
    long-lived task such as an outbox loop fails on every later query until a restart - and the pool waits
    for it forever at shutdown.
    """

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
    def transaction(self, *, force_rollback: bool = False, **kwargs: Any) -> _ReleasingTransaction:
        return _ReleasingTransaction(lambda: self, force_rollback, **kwargs)


class _MinichatDatabase(databases.Database):
    SUPPORTED_BACKENDS = {
        **databases.Database.SUPPORTED_BACKENDS,
        SQLITE_DRIVER_SCHEME: f"{__name__}:MinichatSQLiteBackend",
        "sqlite": f"{__name__}:MinichatSQLiteBackend",
        POSTGRES_DRIVER_SCHEME: f"{__name__}:MinichatPostgresBackend",
        "postgresql": f"{__name__}:MinichatPostgresBackend",
    }

    # As databases.Database, with the transaction above on both ways in (database and connection).
    def connection(self) -> Connection:
        if self._global_connection is not None:
            return self._global_connection
        if not self._connection:
            self._connection = _ReleasingConnection(self, self._backend)
        return self._connection

    def transaction(self, *, force_rollback: bool = False, **kwargs: Any) -> _ReleasingTransaction:
        return _ReleasingTransaction(self.connection, force_rollback, **kwargs)


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
    database = _MinichatDatabase(url, min_size=max(0, min(min_size, max_size)), max_size=max_size)
    await database.connect()
    return database


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
