"""Alembic environment: runs the revisions on SQLite or PostgreSQL through an async driver.

minichat_host.db.migrate hands over an open connection in `config.attributes["connection"]`; without one
(e.g. the `alembic` command line with `sqlalchemy.url` set) this file opens its own async engine.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context

from minichat_host.db.engine import create_async_sa_engine, dialect_name
from minichat_host.db.migrate import compare_server_default
from minichat_host.db.schema import metadata

config = context.config


def _configure(connection: sa.Connection | None = None, url: str | None = None) -> None:
    sqlite = (connection.dialect.name if connection is not None else dialect_name(url or "")) == "sqlite"
    context.configure(
        connection=connection,
        url=url,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=sqlite,
        # engine.create_async_sa_engine gives SQLite real transactions, so a failed revision rolls back.
        transactional_ddl=True,
        compare_type=True,
        compare_server_default=compare_server_default,
        literal_binds=connection is None,
    )


def _run_on(connection: sa.Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    engine = create_async_sa_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on)
            await connection.commit()
    finally:
        await engine.dispose()


def run() -> None:
    if context.is_offline_mode():
        _configure(url=config.get_main_option("sqlalchemy.url"))
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if isinstance(connection, sa.Connection):
        _run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass a connection in config.attributes or set sqlalchemy.url")
    asyncio.run(_run_with_own_engine(url))


run()
