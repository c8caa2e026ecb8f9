"""Hot-path SQL run on the task's driver connection, bypassing per-call SQLAlchemy compilation.

`databases` compiles every SQLAlchemy statement on every call, which costs more CPU than the database
work of a small enqueue or ack. The handful of statements on the per-message path are written once here
as SQL text with `$n` placeholders (rewritten to SQLite's `?n`) and run on the raw connection of the
current task - the same connection, and so the same transaction, that `databases` uses for this task.
asyncpg prepares and caches them per connection. Everything else stays SQLAlchemy Core.

Timestamps are passed the way the `UtcDateTime` column type stores them: aware datetimes for PostgreSQL,
SQLAlchemy's naive-UTC text format for SQLite, so both paths read and compare the same values.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any, Literal

import databases

from minichat_host.db.tables import sqlite_utc_text

DialectName = Literal["sqlite", "postgresql"]
_PLACEHOLDER = re.compile(r"\$(\d+)")


class Sql:
    """One statement in both dialects; `$1`.. become `?1`.. for SQLite (numbered, so reusable)."""

    def __init__(self, postgresql: str, sqlite: str | None = None) -> None:
        self.postgresql = " ".join(postgresql.split())
        self.sqlite = _PLACEHOLDER.sub(r"?\1", " ".join((sqlite or postgresql).split()))

    def text(self, dialect: DialectName) -> str:
        return self.postgresql if dialect == "postgresql" else self.sqlite


def placeholders(first: int, count: int) -> str:
    """`$first, …` for an IN list of `count` values (SQL text built once per count, not per call)."""
    return ", ".join(f"${index}" for index in range(first, first + count))


def _numbered(args: Sequence[Any]) -> dict[str, Any]:
    """SQLite's `?1`.. bound by name: a plain sequence for numbered placeholders is deprecated (Python 3.12)
    and an error from Python 3.14."""
    return {str(number): value for number, value in enumerate(args, 1)}


def timestamp(dialect: DialectName, value: dt.datetime) -> Any:
    """A bind value for a UtcDateTime column."""
    if dialect == "postgresql":
        return value.astimezone(dt.UTC)
    # The same text as strftime("%Y-%m-%d %H:%M:%S.%f") and the column type's (two per enqueue).
    return sqlite_utc_text(value)


def parse_timestamp(value: Any) -> dt.datetime:
    """A UtcDateTime column value as an aware UTC datetime (SQLite returns text)."""
    parsed: dt.datetime = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


async def fetch(db: databases.Database, dialect: DialectName, sql: Sql, *args: Any) -> list[Sequence[Any]]:
    async with db.connection() as connection:
        raw = connection.raw_connection
        if dialect == "postgresql":
            rows: list[Sequence[Any]] = await raw.fetch(sql.postgresql, *args)
            return rows
        async with raw.execute(sql.sqlite, _numbered(args)) as cursor:
            result: list[Sequence[Any]] = await cursor.fetchall()
            return result


async def fetch_one(
    db: databases.Database, dialect: DialectName, sql: Sql, *args: Any
) -> Sequence[Any] | None:
    rows = await fetch(db, dialect, sql, *args)
    return rows[0] if rows else None


async def execute(db: databases.Database, dialect: DialectName, sql: Sql, *args: Any) -> int | None:
    """Run a statement; returns SQLite's lastrowid (None on PostgreSQL)."""
    async with db.connection() as connection:
        raw = connection.raw_connection
        if dialect == "postgresql":
            await raw.execute(sql.postgresql, *args)
            return None
        async with raw.execute(sql.sqlite, _numbered(args)) as cursor:
            lastrowid: int | None = cursor.lastrowid
            return lastrowid


async def execute_each(
    db: databases.Database, dialect: DialectName, *statements: tuple[Sql, Sequence[Any]]
) -> None:
    """Statements in order on one checkout of the task's connection, results dropped (a task's connection
    taken and given back once, where `execute` takes it around every statement)."""
    async with db.connection() as connection:
        raw = connection.raw_connection
        for sql, args in statements:
            if dialect == "postgresql":
                await raw.execute(sql.postgresql, *args)
            else:
                async with raw.execute(sql.sqlite, _numbered(args)):
                    pass
