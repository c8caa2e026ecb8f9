"""Schema migrations (Alembic), driven from code: no alembic.ini needed, the revisions ship in the package.

The synchronous functions may be called from a thread that is running an event loop (e.g. inside an
aiohttp handler or an async test); they then do the work on a short-lived worker thread with its own loop.
Runs that change the schema are serialized: within the process by a lock, and on PostgreSQL across
processes by an advisory lock, so replicas starting together migrate one after another.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from minichat_host.db.engine import async_driver_url, create_async_sa_engine, dialect_name, sqlite_path
from minichat_host.db.schema import metadata

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
# pg_advisory_lock key held while migrating ("mc" + 2; the orphan watchdog uses "mc" + 1).
ADVISORY_LOCK_MIGRATIONS: Final = 0x6D63_0002

T = TypeVar("T")


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations (and at `url`, for offline/CLI use)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        # ConfigParser interpolation would eat a '%' in a password.
        config.set_main_option("sqlalchemy.url", async_driver_url(url).replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest revision shipped with this version of minichat."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def planned_steps(current: str | None, revision: str, *, downgrade: bool = False) -> int | None:
    """How many revision steps an upgrade (or downgrade) from `current` to `revision` runs.

    `revision` as the commands take it: an id, `head`, `base`, or relative (`+1`, `-1`). None when Alembic
    cannot tell (the command itself then reports why).
    """
    script = ScriptDirectory.from_config(alembic_config())
    try:
        if downgrade:
            steps = script.iterate_revisions(current, revision, select_for_downgrade=True)
        else:
            steps = script.iterate_revisions(revision, current, implicit_base=True)
        return sum(1 for _ in steps)
    except Exception:
        return None


# --- async API ------------------------------------------------------------------------------------------


async def aupgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` on the running event loop."""
    await _on_connection(url, lambda connection: _alembic(connection, command.upgrade, revision))


async def adowngrade(url: str, revision: str) -> None:
    """Downgrade the database at `url` to `revision` ('base' removes everything) on the running loop."""
    await _on_connection(url, lambda connection: _alembic(connection, command.downgrade, revision))


async def acurrent(url: str) -> str | None:
    """The revision the database at `url` is at; None for an empty (never migrated) database."""
    if dialect_name(url) == "sqlite" and not sqlite_path(url).exists():
        return None  # do not create the file just to look at it
    return await _on_connection(url, _current_revision, lock=False)


async def aschema_diff(url: str) -> list[Any]:
    """Alembic's autogenerate diff between the database at `url` and `schema.metadata` ([] = in sync).

    Compares tables, columns, types, nullability, server defaults, indexes, unique constraints and foreign
    keys, so it reveals a tables.py change that has no migration.
    """
    return await _on_connection(url, _schema_diff, lock=False)


# --- sync API -------------------------------------------------------------------------------------------


def upgrade(url: str, revision: str = "head") -> None:
    _run_blocking(lambda: aupgrade(url, revision))


def downgrade(url: str, revision: str) -> None:
    _run_blocking(lambda: adowngrade(url, revision))


def current(url: str) -> str | None:
    return _run_blocking(lambda: acurrent(url))


def schema_diff(url: str) -> list[Any]:
    return _run_blocking(lambda: aschema_diff(url))


def compare_server_default(
    context: MigrationContext,
    inspected_column: sa.Column[Any],
    metadata_column: sa.Column[Any],
    inspected_default: str | None,
    metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool:
    """True when two server defaults differ, ignoring how each engine spells them back.

    Reflection returns e.g. `'0'::bigint` (PostgreSQL) or `('')` (SQLite) for what the model renders as `0`
    and ``; Alembic's own comparison trips over those (and runs a query that fails for JSON on PostgreSQL).
    """
    return _normalized_default(inspected_default) != _normalized_default(rendered_metadata_default)


# --- internals ------------------------------------------------------------------------------------------


def _run_blocking(make_coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    # asyncio.run cannot nest in a thread whose loop is running: use a worker thread with its own loop.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="minichat-migrate") as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()


# Alembic's `context` and `op` are process-wide proxies, so two runs in one process (threads, or tasks on
# one loop) would drive each other's connections; a thread lock polled from async code serializes them
# across threads and event loops and cannot be left held by a cancelled waiter.
_ALEMBIC_RUN_LOCK: Final = threading.Lock()


@asynccontextmanager
async def _alembic_run_slot() -> AsyncIterator[None]:
    # Polling, not an asyncio.Event: waiters may sit on different threads and loops.
    while not _ALEMBIC_RUN_LOCK.acquire(blocking=False):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        _ALEMBIC_RUN_LOCK.release()


async def _on_connection(url: str, work: Callable[[sa.Connection], T], *, lock: bool = True) -> T:
    if lock:
        async with _alembic_run_slot():
            return await _on_locked_connection(url, work, lock=True)
    return await _on_locked_connection(url, work, lock=False)


async def _on_locked_connection(url: str, work: Callable[[sa.Connection], T], *, lock: bool) -> T:
    engine = create_async_sa_engine(url)
    try:
        async with engine.connect() as connection:
            if lock and dialect_name(url) == "postgresql":
                # Session-level lock: survives the commit below, released when the connection closes.
                await connection.execute(
                    sa.text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_MIGRATIONS}
                )
                await connection.commit()
            result = await connection.run_sync(work)
            await connection.commit()
            return result
    finally:
        await engine.dispose()


def _alembic(connection: sa.Connection, action: Callable[[Config, str], None], revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    action(config, revision)


def _current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _schema_diff(connection: sa.Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": compare_server_default}
    )
    return list(compare_metadata(context, metadata))


_TRAILING_CASTS: Final = re.compile(r"(::[A-Za-z_][A-Za-z0-9_ ]*(\[\])?)+$")


def _normalized_default(text: str | None) -> str | None:
    if text is None:
        return None
    value = text.strip()
    while value.startswith("(") and value.endswith(")"):
        value = value[1:-1].strip()
    value = _TRAILING_CASTS.sub("", value)
    if len(value) >= 2 and value[0] == value[-1] == "'":
        value = value[1:-1].replace("''", "'")
    return value
