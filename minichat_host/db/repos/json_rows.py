"""Listing pages read on SQLite as one JSON array per row, decoded by msgspec in one call.

The stdlib `sqlite3` module fetches a row column by column, and releases and retakes the GIL around each
column's `sqlite3_column_type` (two mutex pairs, and SQLite's own connection mutex); the column types then
convert each UUID and timestamp in Python. A page of twenty chats is 147 columns: callgrind put ~45% of a
list-chats request's instructions in fetching and converting them. Selecting `json_array(...)` instead
makes each row one text column, which SQLite builds in C, and `msgspec` decodes the page's rows into typed
tuples (UUIDs, aware UTC datetimes, bools, ints, strings) in one C call.

The values are the same as the plain statement's, type for type: `tests/db/test_json_rows.py` compares
them. A page whose values do not decode as the types say (a timestamp not in the plain form
`UtcDateTime` writes, say, written by another tool) is read again by the plain statement, whose column
types decide. PostgreSQL keeps the plain statement: asyncpg decodes its binary rows in C already.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa

from minichat_host.db.prepared import Prepared
from minichat_host.db.repos.reads import UtcColumnRead, UtcRead, UuidRead
from minichat_host.db.tables import UtcDateTime


def _rfc3339(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """A stored timestamp (naive UTC text, `YYYY-MM-DD HH:MM:SS.ffffff`) as RFC 3339 in UTC: a `Z` at the end
    (RFC 3339 allows the space for the `T`, and msgspec takes it; NULL stays NULL: `NULL || 'Z'` is NULL).
    A literal, not a bound value: the SQL is fixed."""
    return column.op("||")(sa.literal_column("'Z'"))


@dataclass(frozen=True, slots=True)
class JsonRows:
    """The SQLite statement selecting one `json_array` per row, and the decoder of a page of them."""

    prepared: Prepared
    decoder: msgspec.json.Decoder[list[tuple[Any, ...]]]

    def decode(self, texts: Sequence[tuple[str]]) -> list[tuple[Any, ...]]:
        """The rows of `texts` (each a fetched row of one JSON array); `msgspec.ValidationError` when a value
        is not of its column's type."""
        return self.decoder.decode("[" + ",".join([text for (text,) in texts]) + "]")


def _json_value(element: sa.ColumnElement[Any]) -> tuple[sa.ColumnElement[Any], type[Any]]:
    """What goes into the row's `json_array` for one select-list element, and the Python type it decodes
    to; TypeError for a type without a JSON form here."""
    inner: Any = element.element if isinstance(element, sa.Label) else element
    kind = element.type
    if isinstance(kind, UtcRead) and isinstance(inner, UtcColumnRead):
        return _rfc3339(inner.column), dt.datetime
    if isinstance(kind, UtcDateTime):
        return _rfc3339(inner), dt.datetime
    if isinstance(kind, UuidRead | sa.Uuid):
        return inner, uuid.UUID
    if isinstance(kind, sa.Boolean):
        # Stored 0 / 1: JSON false / true (the value is computed once: an EXISTS is not run twice). Any other
        # value goes into the array as it is and fails to decode as a bool: the plain statement decides.
        return sa.case(
            (sa.literal_column("0"), sa.func.json(sa.literal_column("'false'"))),
            (sa.literal_column("1"), sa.func.json(sa.literal_column("'true'"))),
            value=inner,
            else_=inner,
        ), bool
    if isinstance(kind, sa.Integer):  # BigInteger included
        return inner, int
    if isinstance(kind, sa.Date) and not isinstance(kind, sa.DateTime):  # stored `YYYY-MM-DD`
        return inner, dt.date
    if isinstance(kind, sa.String):  # Text and Enum included
        return inner, str
    raise TypeError(f"no JSON row form for {element} ({kind!r})")


def json_rows(statement: sa.Select[Any], name: str) -> JsonRows | None:
    """The JSON form of `statement`: the same statement selecting one `json_array` of its columns. None when
    a column has no JSON form (the plain statement is then used everywhere)."""
    try:
        values = [_json_value(column) for column in statement.selected_columns]
    except TypeError:
        return None
    # Every value may be NULL (a nullable column, a scalar subquery without a row): as in the plain form.
    row_type: Any = tuple[tuple(kind | None for _, kind in values)]  # type: ignore[misc]
    row = sa.func.json_array(*[expression for expression, _ in values]).label("row")
    return JsonRows(
        Prepared(statement.with_only_columns(row), f"{name} (json rows)", dialect="sqlite"),
        msgspec.json.Decoder(list[row_type]),
    )
