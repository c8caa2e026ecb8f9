"""Opening the database: the `databases` pool used by the service, and SQLAlchemy async engines for Alembic.

Supported URLs: `sqlite+aiosqlite:////absolute/path.db` (four slashes for an absolute path) and
`postgresql+asyncpg://user:password@host:port/dbname`; `sqlite://` and `postgresql://` / `postgres://` are
accepted and mapped to those async drivers.

SQLite settings applied to every pooled connection (databases 0.9 opens a new aiosqlite connection, each on
its own thread, for every task that touches the database, so a one-off PRAGMA would not stick):
`foreign_keys=ON`, `busy_timeout`, `synchronous=NORMAL` (safe with WAL against process crashes). WAL is a
property of the database file and is switched on once when the pool connects. Root transactions start with
`BEGIN IMMEDIATE`: a deferred transaction that reads and then writes fails at once with "database is locked"
when another connection committed in between (the busy timeout does not apply to that case), while
IMMEDIATE takes the write lock up front and waits for it under the busy timeout.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sqlite3
import threading
from pathlib import Path
from typing import Any, Final, Literal

import aiosqlite
import asyncpg
import databases
import sqlalchemy as sa
from databases.backends.sqlite import SQLiteBackend, SQLiteConnection, SQLitePool, SQLiteTransaction
from databases.core import DatabaseURL
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

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
    """SQLitePool that runs the connection PRAGMAs on every connection it opens."""

    def __init__(self, url: DatabaseURL, pragmas: tuple[str, ...], **options: Any) -> None:
        super().__init__(url, **options)
        self._pragmas = pragmas

    async def acquire(self) -> aiosqlite.Connection:
        # As SQLitePool.acquire, plus: when opening fails, aiosqlite stops its worker thread without waiting
        # for it, and the thread then reports to an event loop that may already be closed; wait for it here.
        connection = aiosqlite.connect(database=self._database, isolation_level=None, **self._options)
        try:
            await connection.__aenter__()
        except BaseException:
            worker = getattr(connection, "_thread", None)
            if isinstance(worker, threading.Thread) and worker.is_alive():
                await asyncio.to_thread(worker.join, 5)
            raise
        try:
            for pragma in self._pragmas:
                cursor = await connection.execute(pragma)
                await cursor.close()
        except BaseException:
            await self.release(connection)
            raise
        return connection


class _ImmediateSQLiteTransaction(SQLiteTransaction):
    async def start(self, is_root: bool, extra_options: dict[Any, Any]) -> None:
        if not is_root:
            await super().start(is_root, extra_options)
            return
        raw = self._connection._connection
        assert raw is not None, "Connection is not acquired"
        self._is_root = True
        async with raw.execute("BEGIN IMMEDIATE") as cursor:
            await cursor.close()


class _ImmediateSQLiteConnection(SQLiteConnection):
    def transaction(self) -> _ImmediateSQLiteTransaction:
        return _ImmediateSQLiteTransaction(self)


class MinichatSQLiteBackend(SQLiteBackend):
    """databases' SQLite backend with per-connection PRAGMAs and BEGIN IMMEDIATE transactions."""

    def __init__(
        self, database_url: DatabaseURL | str, *, busy_timeout_ms: int = 5000, **options: Any
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
        self._pool = _PragmaSQLitePool(self._database_url, pragmas, **self._options)

    def connection(self) -> _ImmediateSQLiteConnection:
        return _ImmediateSQLiteConnection(self._pool, self._dialect)


class _MinichatDatabase(databases.Database):
    SUPPORTED_BACKENDS = {
        **databases.Database.SUPPORTED_BACKENDS,
        SQLITE_DRIVER_SCHEME: f"{__name__}:MinichatSQLiteBackend",
        "sqlite": f"{__name__}:MinichatSQLiteBackend",
    }


async def connect_database(
    url: str, *, min_size: int = 1, max_size: int = 10, sqlite_busy_timeout_ms: int = 5000
) -> databases.Database:
    """A connected `databases.Database` for a SQLite or PostgreSQL URL (the caller disconnects it).

    SQLite: the parent directory is created, WAL is switched on and each connection gets the PRAGMAs above.
    PostgreSQL: an asyncpg pool of `min_size`..`max_size` connections.
    """
    url = async_driver_url(url)
    database: databases.Database
    if dialect_name(url) == "sqlite":
        path = sqlite_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        database = _MinichatDatabase(url, busy_timeout_ms=sqlite_busy_timeout_ms)
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
