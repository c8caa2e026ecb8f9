"""Schema migrations (Alembic), driven from code: no alembic.ini needed, the revisions ship in the package.

The synchronous functions may be called from a thread that is running an event loop (e.g. inside an
aiohttp handler or an async test); they then do the work on a short-lived worker thread with its own loop.
On PostgreSQL every run holds an advisory lock, so replicas starting together migrate one after another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from minichat_host.db.engine import async_driver_url, create_async_sa_engine, dialect_name

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


# --- async API ------------------------------------------------------------------------------------------


async def aupgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` to `revision` on the running event loop."""
    await _on_connection(url, lambda connection: _alembic(connection, command.upgrade, revision))


async def adowngrade(url: str, revision: str) -> None:
    """Downgrade the database at `url` to `revision` ('base' removes everything) on the running loop."""
    await _on_connection(url, lambda connection: _alembic(connection, command.downgrade, revision))


async def acurrent(url: str) -> str | None:
    """The revision the database at `url` is at; None for an empty (never migrated) database."""
    return await _on_connection(url, _current_revision, lock=False)


# --- sync API -------------------------------------------------------------------------------------------


def upgrade(url: str, revision: str = "head") -> None:
    _run_blocking(lambda: aupgrade(url, revision))


def downgrade(url: str, revision: str) -> None:
    _run_blocking(lambda: adowngrade(url, revision))


def current(url: str) -> str | None:
    return _run_blocking(lambda: acurrent(url))


# --- internals ------------------------------------------------------------------------------------------


def _run_blocking(make_coroutine: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    # asyncio.run cannot nest in a thread whose loop is running: use a worker thread with its own loop.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="minichat-migrate") as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()


async def _on_connection(url: str, work: Callable[[sa.Connection], T], *, lock: bool = True) -> T:
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
