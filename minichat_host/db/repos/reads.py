"""Reading values on the hot JSON endpoints for less: each UUID and timestamp of a row converted once.

`databases` and the `LeanRecord`s of prepared statements (db/engine.py) hand back values already converted
by the column types on SQLite, and asyncpg's own on PostgreSQL; `as_uuid` / `as_utc` (common.py) then
normalize both. `fast_uuid` / `fast_utc` do the same with the usual case - already a plain UUID, already
aware UTC - checked first, so it costs a type check instead of a new object.

`uuid_read(column)` does the same for a `sa.Uuid` column: SQLite's stored 32 hex digits become a `uuid.UUID`
without `UUID.__init__`'s parsing (~0.55 µs instead of ~1.1 per id); PostgreSQL is left to asyncpg.

`utc_read(column)` selects a `UtcDateTime` column (tables.py) for such a read: on SQLite the stored text
(naive UTC, as `UtcDateTime` writes it) is parsed straight to an aware UTC datetime, ~0.2 µs where the
column type's processor chain (SQLAlchemy's DATETIME, then `replace(tzinfo=...)`) takes ~2 µs; on PostgreSQL
asyncpg already returns aware datetimes. The SQL is the column itself, labelled with its name.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import Dialect

from minichat_host.db.repos.common import as_utc, as_uuid, uuid_from_int
from minichat_host.db.tables import UtcDateTime

_fromisoformat: Final = dt.datetime.fromisoformat


def fast_uuid(value: Any) -> uuid.UUID:
    """`as_uuid` with the common case (already a plain UUID) first."""
    return value if type(value) is uuid.UUID else as_uuid(value)


def fast_utc(value: Any) -> dt.datetime:
    """`as_utc` with the common case (already an aware UTC datetime) first."""
    if type(value) is dt.datetime and value.tzinfo is dt.UTC:
        return value
    return as_utc(value)


def _sqlite_utc(value: Any) -> Any:
    if type(value) is str:
        try:
            return _fromisoformat(value + "+00:00")  # naive UTC text: aware, tzinfo dt.UTC itself
        except ValueError:
            pass  # not the plain form UtcDateTime writes: as_utc decides (and raises for garbage)
    return None if value is None else as_utc(value)


def _sqlite_uuid(value: Any) -> Any:
    if type(value) is str and len(value) == 32 and value.isalnum():
        try:
            number = int(value, 16)
        except ValueError:
            pass  # not hex: as_uuid decides (and raises for garbage)
        else:
            return uuid_from_int(number)  # what UUID(hex=...) builds, minus its parsing
    return None if value is None else as_uuid(value)


class _UuidRead(sa.types.TypeEngine[uuid.UUID]):
    """Result side of `sa.Uuid` only (used through `type_coerce`, never rendered in SQL)."""

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        return _sqlite_uuid if dialect.name == "sqlite" else None


_UUID_READ: Final = _UuidRead()


def uuid_read(column: sa.Column[uuid.UUID]) -> sa.ColumnElement[uuid.UUID]:
    """`column` (a `sa.Uuid`) in a select list, read as above; still labelled `column.name`."""
    return sa.type_coerce(column, _UUID_READ).label(column.name)


class _UtcRead(sa.types.TypeEngine[dt.datetime]):
    """Result side of `UtcDateTime` only (used through `type_coerce`, never rendered in SQL)."""

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        return _sqlite_utc if dialect.name == "sqlite" else None


_UTC_READ: Final = _UtcRead()


def utc_read(column: sa.Column[dt.datetime]) -> sa.ColumnElement[dt.datetime]:
    """`column` (a `UtcDateTime`) in a select list, read as above; still labelled `column.name`."""
    return sa.type_coerce(column, _UTC_READ).label(column.name)


def fast_read(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    """`column` in a select list, its UUIDs and timestamps read as above (other columns as they are)."""
    if isinstance(column.type, sa.Uuid):
        return uuid_read(column)
    if isinstance(column.type, UtcDateTime):
        return utc_read(column)
    return column
