"""Keyset pagination over an `(ordered timestamp, id)` pair, and the opaque cursor that names a page.

A page is the `limit` rows strictly after (direction `next`) or strictly before (direction `prev`) a
position in the listing's order; the id breaks ties between equal timestamps, so rows sharing a
timestamp are neither skipped nor repeated. Both cursors of a page are exact: one extra `LIMIT limit+1`
row tells whether more rows lie ahead, and one `EXISTS`-style probe whether rows lie behind.

Cursor token = base64url (no padding) of a compact JSON object:
`{"v":1, "s":<scope fingerprint>, "o":<order name>, "d":"next"|"prev", "k":[<timestamp>, <id>], "i":bool?}`.
The scope fingerprint ties a cursor to one listing (e.g. the messages of one chat of one owner) and the
order name to its sort, so a cursor from another listing or sort is rejected as `InvalidCursorError`, as is
anything that does not decode to exactly that shape. A well-formed cursor is only a position: it cannot
widen what the caller's query can see.
`i` (inclusive) is set only on the cursor that leads back from an empty page, so the row at the position
itself is not skipped.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
import sqlalchemy as sa

from minichat_host.db.prepared import Prepared
from minichat_host.db.repos.common import Executor
from minichat_host.db.repos.json_rows import json_rows
from minichat_host.db.repos.reads import fast_utc, fast_uuid

Direction = Literal["next", "prev"]

CURSOR_VERSION: Final = 1
MAX_CURSOR_LENGTH: Final = 512


class InvalidCursorError(ValueError):
    """The cursor token is not one this listing issued (undecodable, tampered, or for another listing)."""


@dataclass(frozen=True, slots=True)
class KeysetOrder:
    """A listing's sort: `primary` then `tiebreak`, both ascending or both descending."""

    name: str  # written into cursors: a cursor only fits the order it was made for
    primary: sa.Column[dt.datetime]
    tiebreak: sa.Column[uuid.UUID]
    descending: bool

    def order_by(self, *, reverse: bool = False) -> tuple[sa.ColumnElement[Any], ...]:
        descending = self.descending != reverse
        if descending:
            return (self.primary.desc(), self.tiebreak.desc())
        return (self.primary.asc(), self.tiebreak.asc())


@dataclass(frozen=True, slots=True)
class Position:
    primary: dt.datetime
    tiebreak: uuid.UUID


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Decoded cursor: the page of rows after (`next`) or before (`prev`) `position` in the order."""

    direction: Direction
    position: Position
    inclusive: bool = False


@dataclass(frozen=True, slots=True)
class KeysetPage:
    """Rows of one page in listing order, and the cursors of its neighbours (None at either end). Each row
    is the sequence of its values in the order of the listing's columns (`Prepared.fetch_values`)."""

    rows: list[Sequence[Any]]
    next_cursor: PageCursor | None
    prev_cursor: PageCursor | None


class _CursorPayload(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    v: int
    s: str
    o: str
    d: Direction
    k: tuple[Annotated[dt.datetime, msgspec.Meta(tz=True)], uuid.UUID]
    i: bool = False


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_CursorPayload)


@functools.lru_cache(maxsize=4096)  # the same owners list again and again; a digest costs ~2 µs
def scope_fingerprint(*parts: object) -> str:
    """A short stable digest of what a listing is scoped to (resource name, owner, parent id...)."""
    joined = "\x1f".join(str(p) for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]


def encode_cursor(cursor: PageCursor, *, scope: str, order: KeysetOrder) -> str:
    payload = _CursorPayload(
        v=CURSOR_VERSION,
        s=scope,
        o=order.name,
        d=cursor.direction,
        k=(cursor.position.primary.astimezone(dt.UTC), cursor.position.tiebreak),
        i=cursor.inclusive,
    )
    return base64.urlsafe_b64encode(_encoder.encode(payload)).rstrip(b"=").decode("ascii")


def decode_cursor(token: str, *, scope: str, orders: Sequence[KeysetOrder]) -> tuple[KeysetOrder, PageCursor]:
    """The order and cursor a token names; `InvalidCursorError` unless it was issued for `scope` and one of
    `orders` (a listing may offer several sorts; the cursor says which one its pages follow)."""
    if not token or len(token) > MAX_CURSOR_LENGTH:
        raise InvalidCursorError("cursor is empty or too long")
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        payload = _decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidCursorError("cursor is not a valid page token") from None
    if payload.v != CURSOR_VERSION:
        raise InvalidCursorError("cursor version is not supported")
    if payload.s != scope:
        raise InvalidCursorError("cursor belongs to another listing")
    order = next((candidate for candidate in orders if candidate.name == payload.o), None)
    if order is None:
        raise InvalidCursorError("cursor was made for another sort order")
    primary, tiebreak = payload.k
    cursor = PageCursor(
        direction=payload.d, position=Position(primary.astimezone(dt.UTC), tiebreak), inclusive=payload.i
    )
    return order, cursor


def _after(order: KeysetOrder, *, descending: bool, inclusive: bool) -> sa.ColumnElement[bool]:
    """Rows that come after the position (bind parameters `k_primary`, `k_tiebreak`) when scanning in
    `descending` order (or at it, if inclusive)."""
    key = sa.tuple_(order.primary, order.tiebreak)
    bound = sa.tuple_(
        sa.bindparam("k_primary", type_=order.primary.type),
        sa.bindparam("k_tiebreak", type_=order.tiebreak.type),
    )
    if descending:
        return key <= bound if inclusive else key < bound
    return key >= bound if inclusive else key > bound


def _position_of(values: Sequence[Any], indexes: tuple[int, int]) -> Position:
    primary, tiebreak = indexes
    return Position(fast_utc(values[primary]), fast_uuid(values[tiebreak]))


class KeysetListing:
    """A listing whose statements are prepared once per shape (db/prepared.py).

    `columns` are what a page selects (they must include the orders' primary and tiebreak columns by
    name), `table` is what the probe for rows behind a cursor scans, and `scope` is the listing's WHERE
    clause (ownership and visibility) written with named bind parameters, whose values every call passes.
    The keyset position is bound as `k_primary` / `k_tiebreak` and the page size as `page_limit`: those
    names must not be used by `scope`.
    """

    __slots__ = ("columns", "name", "scope", "table")

    def __init__(
        self,
        name: str,
        *,
        columns: Sequence[sa.ColumnElement[Any]],
        table: sa.FromClause,
        scope: sa.ColumnElement[bool],
    ) -> None:
        self.name = name
        self.columns = tuple(columns)
        self.table = table
        self.scope = scope


@functools.cache
def _position_indexes(listing: KeysetListing, order: KeysetOrder) -> tuple[int, int]:
    """Where `order`'s primary and tiebreak columns are among the listing's (found by name, as labelled)."""
    names = [column.name for column in listing.columns]  # type: ignore[attr-defined]
    try:
        return names.index(order.primary.name), names.index(order.tiebreak.name)
    except ValueError:
        raise ValueError(f"listing {listing.name!r} does not select the columns of {order.name!r}") from None


@functools.cache
def _keyset_statements(
    listing: KeysetListing, order: KeysetOrder, forward: bool, inclusive: bool, has_cursor: bool
) -> tuple[Prepared, Prepared | None]:
    """The page query and (with a cursor) the probe for rows behind it, for one shape of request."""
    # The SQL scan runs in listing order for `next` and against it for `prev` (rows nearest the
    # position first); a `prev` page is reversed back into listing order afterwards.
    scan_descending = order.descending if forward else not order.descending
    shape = f"{listing.name} {order.name} {'next' if forward else 'prev'}"
    after = _after(order, descending=scan_descending, inclusive=inclusive) if has_cursor else None
    probe: Prepared | None = None
    if after is not None:
        # Behind the position = everything the page query excluded on that side of it.
        behind = sa.select(order.tiebreak).select_from(listing.table).where(listing.scope, sa.not_(after))
        probe = Prepared(behind.limit(1), f"{shape} behind (inclusive={inclusive})")
        shape = f"{shape} after (inclusive={inclusive})"

    query = sa.select(*listing.columns).where(listing.scope)
    if after is not None:
        query = query.where(after)
    query = query.order_by(*order.order_by(reverse=not forward)).limit(
        sa.bindparam("page_limit", type_=sa.Integer)
    )
    rows = Prepared(query, shape)
    rows.json_rows = json_rows(query, shape)  # SQLite's (db/repos/json_rows.py)
    return rows, probe


async def fetch_keyset_page(
    conn: Executor,
    listing: KeysetListing,
    scope_values: Mapping[str, Any],
    *,
    order: KeysetOrder,
    limit: int,
    cursor: PageCursor | None,
) -> KeysetPage:
    """One page of `listing` in `order`; `scope_values` are the values of its scope's bind parameters.

    `conn` is a `databases.Database` or connection opened by `connect_database` (prepared statements).
    The scope applies to the rows and to the probe on the listing's table that decides whether a cursor
    for the other direction exists.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    forward = cursor is None or cursor.direction == "next"
    inclusive = cursor is not None and cursor.inclusive
    rows_statement, probe = _keyset_statements(listing, order, forward, inclusive, cursor is not None)
    values = dict(scope_values)
    if cursor is not None:
        values["k_primary"] = cursor.position.primary
        values["k_tiebreak"] = cursor.position.tiebreak
    fetched = await rows_statement.fetch_values(conn, page_limit=limit + 1, **values)
    more_ahead = len(fetched) > limit
    rows = fetched[:limit]
    if not forward:
        rows.reverse()

    more_behind = False
    if cursor is not None:
        assert probe is not None
        more_behind = await probe.fetch_one(conn, **values) is not None

    has_next, has_prev = (more_ahead, more_behind) if forward else (more_behind, more_ahead)
    if rows:
        indexes = _position_indexes(listing, order)
        next_cursor = PageCursor("next", _position_of(rows[-1], indexes)) if has_next else None
        prev_cursor = PageCursor("prev", _position_of(rows[0], indexes)) if has_prev else None
    else:
        # An empty page (rows vanished, or a cursor past the end): the way back starts at the position
        # itself, including the row there if it still exists.
        back = (
            PageCursor("prev" if forward else "next", cursor.position, inclusive=not cursor.inclusive)
            if cursor is not None and more_behind
            else None
        )
        next_cursor, prev_cursor = (None, back) if forward else (back, None)
    return KeysetPage(rows=rows, next_cursor=next_cursor, prev_cursor=prev_cursor)
