"""Reading values on the hot JSON endpoints for less: each UUID and timestamp of a row converted once.

`databases` and the `LeanRecord`s of prepared statements (db/engine.py) hand back values already converted
by the column types on SQLite, and asyncpg's own on PostgreSQL; `as_uuid` / `as_utc` (common.py) then
normalize both. `fast_uuid` / `fast_utc` do the same with the usual case - already a plain UUID, already
aware UTC - checked first, so it costs a type check instead of a new object.

`uuid_read(column)` does the same for a `sa.Uuid` column: SQLite's stored 32 hex digits become a `uuid.UUID`
without `UUID.__init__`'s parsing (~0.55 µs instead of ~1.1 per id); PostgreSQL is left to asyncpg.

`utc_read(column)` selects a `UtcDateTime` column (tables.py) for such a read: on SQLite the stored text
(naive UTC, as `UtcDateTime` writes it) is parsed straight to an aware UTC datetime, ~0.2 µs where the
column type's processor chain (SQLAlchemy's DATETIME, then `replace(tzinfo=...)`) takes ~2 µs. On PostgreSQL
the column is selected as its epoch microseconds (`int8`), made an aware UTC datetime here in ~0.4 µs:
asyncpg's own `timestamptz` decoding (a timedelta added to its epoch) took ~0.9 µs a value, and a page of
twenty chats has forty (a list-chats request runs 3% fewer instructions, callgrind; PostgreSQL spends ~0.17 µs
more on each). Labelled with the column's name either way.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any, Final

import sqlalchemy as sa
from asyncpg.pgproto.pgproto import UUID as _ASYNCPG_UUID
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from minichat_host.db.repos.common import as_utc, as_uuid, uuid_from_int
from minichat_host.db.tables import UtcDateTime

_fromisoformat: Final = dt.datetime.fromisoformat


def fast_uuid(value: Any) -> uuid.UUID:
    """`as_uuid` with the common cases first: a plain UUID, or asyncpg's, kept as it is.

    asyncpg's `UUID` is a `uuid.UUID` subclass that compares, hashes, prints and encodes (msgspec) like the
    plain one; making it plain costs ~0.85 µs (its `int` is computed on every access), ~18 µs a page of
    twenty chats on PostgreSQL.
    """
    kind = type(value)
    return value if kind is uuid.UUID or kind is _ASYNCPG_UUID else as_uuid(value)


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


class UuidRead(sa.types.TypeEngine[uuid.UUID]):
    """Result side of `sa.Uuid` only (used through `type_coerce`, never rendered in SQL)."""

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        return _sqlite_uuid if dialect.name == "sqlite" else None


_UUID_READ: Final = UuidRead()


def uuid_read(column: sa.Column[uuid.UUID]) -> sa.ColumnElement[uuid.UUID]:
    """`column` (a `sa.Uuid`) in a select list, read as above; still labelled `column.name`."""
    return sa.type_coerce(column, _UUID_READ).label(column.name)


# Below 2**32 s (the year 2106) a float's error on `micros / 1e6` stays under a quarter of a microsecond, so
# `fromtimestamp`'s rounding gives back the exact microsecond; outside that, whole-integer arithmetic.
_FLOAT_EXACT_MICROS: Final = 2**32 * 1_000_000
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_fromtimestamp: Final = dt.datetime.fromtimestamp
_UTC: Final = dt.UTC
_INT8_MAX: Final = 2**63 - 1
_INT8_MIN: Final = -(2**63)
_INFINITY: Final = dt.datetime.max.replace(tzinfo=dt.UTC)
_MINUS_INFINITY: Final = dt.datetime.min.replace(tzinfo=dt.UTC)


def utc_from_micros(micros: int) -> dt.datetime:
    """The aware UTC datetime `micros` microseconds after the Unix epoch (exact); the int8 extremes stand for
    PostgreSQL's ±infinity, read as asyncpg reads them (`datetime.max` / `datetime.min`, in UTC)."""
    if 0 <= micros < _FLOAT_EXACT_MICROS:
        return _fromtimestamp(micros / 1e6, _UTC)
    if micros == _INT8_MAX:
        return _INFINITY
    if micros == _INT8_MIN:
        return _MINUS_INFINITY
    return _EPOCH + dt.timedelta(microseconds=micros)


class UtcRead(sa.types.TypeEngine[dt.datetime]):
    """Result side of `UtcDateTime` only (the type of a `UtcColumnRead`, never rendered in SQL)."""

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        # PostgreSQL: the int8 of `UtcColumnRead` (processors see int / str / float values only; NULL stays).
        return _sqlite_utc if dialect.name == "sqlite" else utc_from_micros


_UTC_READ: Final = UtcRead()


class UtcColumnRead(sa.sql.expression.ColumnElement[dt.datetime]):
    """A `UtcDateTime` column in a select list: the column itself on SQLite, its epoch microseconds on
    PostgreSQL (see the module docstring)."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: sa.ColumnElement[dt.datetime]) -> None:
        self.column = column
        self.type = _UTC_READ

    @property
    def _from_objects(self) -> list[Any]:  # the column's table, for a select of only such reads
        return self.column._from_objects  # type: ignore[no-any-return]


@compiles(UtcColumnRead)
def _compile_utc_read(element: UtcColumnRead, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column, **kw)


@compiles(UtcColumnRead, "postgresql")
def _compile_utc_read_postgresql(element: UtcColumnRead, compiler: SQLCompiler, **kw: Any) -> str:
    # EXTRACT gives an exact numeric since PostgreSQL 14 (a double before, exact to the µs for today's dates);
    # ±infinity (what asyncpg writes for datetime.max / min) has no int8, so it travels as int8's extremes.
    column = compiler.process(element.column, **kw)
    return (
        f"CASE WHEN isfinite({column}) THEN (EXTRACT(EPOCH FROM {column}) * 1000000)::int8"
        f" WHEN {column} > 'epoch' THEN {_INT8_MAX} WHEN {column} < 'epoch' THEN {_INT8_MIN} END"
    )


def utc_read(column: sa.Column[dt.datetime]) -> sa.ColumnElement[dt.datetime]:
    """`column` (a `UtcDateTime`) in a select list, read as above; still labelled `column.name`."""
    return UtcColumnRead(column).label(column.name)


def fast_read(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
    """`column` in a select list, its UUIDs and timestamps read as above (other columns as they are)."""
    if isinstance(column.type, sa.Uuid):
        return uuid_read(column)
    if isinstance(column.type, UtcDateTime):
        return utc_read(column)
    return column
