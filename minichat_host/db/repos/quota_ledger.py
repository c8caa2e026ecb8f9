"""The quota ledger (`quota_usage`): locked reads for the preflight cascade and delta writes for reserve and
settlement, on SQLite and PostgreSQL.

Rows are keyed by `(tenant_id, user_id, period_type, period_start, bucket)`. Every write is one
`INSERT … ON CONFLICT (key) DO UPDATE SET col = col + excluded.col` per row, so the first reserve of a period
creates the row and later writes add to it in the same statement (no read-modify-write race). On PostgreSQL
every writing transaction first takes the user's advisory quota lock (`user_lock_statement`) and the
preflight reads take `FOR UPDATE` row locks; SQLite serializes writers with `BEGIN IMMEDIATE` instead (the
SQLite dialect renders no FOR UPDATE).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Final

import databases
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from minichat_host.db.prepared import Prepared
from minichat_host.db.repos.json_rows import json_rows
from minichat_host.db.tables import quota_usage
from minichat_host.domain.models import BucketDelta, Period, UsageKey, UsageRow

# First key of `pg_advisory_xact_lock(int, int)` for the per-user quota lock ("mc" + 3).
ADVISORY_SPACE_QUOTA_USER: Final = 0x6D63_0003

_KEY_COLUMNS = ("tenant_id", "user_id", "period_type", "period_start", "bucket")

# BucketDelta field -> quota_usage column it increments.
_DELTA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("reserved_delta", "reserved_credits_micro"),
    ("spent_delta", "spent_credits_micro"),
    ("calls_delta", "calls"),
    ("input_tokens_delta", "input_tokens"),
    ("output_tokens_delta", "output_tokens"),
    ("web_search_calls_delta", "web_search_calls"),
    ("code_interpreter_calls_delta", "code_interpreter_calls"),
)


def _period_filter(periods: Iterable[Period]) -> sa.ColumnElement[bool]:
    return sa.or_(
        *(
            sa.and_(quota_usage.c.period_type == p.period_type, quota_usage.c.period_start == p.period_start)
            for p in periods
        )
    )


async def load_usage(
    db: databases.Database,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    periods: Sequence[Period],
    *,
    for_update: bool = False,
) -> dict[UsageKey, UsageRow]:
    """The user's rows of `periods` (every bucket) by (period_type, period_start, bucket).

    `for_update=True` locks them until the caller's transaction ends (the preflight cascade); rows that do
    not exist yet read as absent (zero usage).
    """
    if not periods:
        return {}
    values: dict[str, Any] = {"tenant_id": tenant_id, "user_id": user_id}
    for number, period in enumerate(periods):
        values[f"type_{number}"], values[f"start_{number}"] = period.period_type, period.period_start
    rows = await _usage_statement(len(periods), for_update).fetch_values(db, **values)
    result: dict[UsageKey, UsageRow] = {}
    # By position, the columns of `_usage_statement` (a record's lookups by name cost ~0.25 µs a value).
    for period_type, period_start, bucket, spent, reserved, web_search, code_interpreter in rows:
        result[(period_type, _as_date(period_start), bucket)] = UsageRow(
            int(spent), int(reserved), int(web_search), int(code_interpreter)
        )
    return result


@functools.cache
def _usage_statement(period_count: int, for_update: bool) -> Prepared:
    query = sa.select(
        quota_usage.c.period_type,
        quota_usage.c.period_start,
        quota_usage.c.bucket,
        quota_usage.c.spent_credits_micro,
        quota_usage.c.reserved_credits_micro,
        quota_usage.c.web_search_calls,
        quota_usage.c.code_interpreter_calls,
    ).where(
        quota_usage.c.tenant_id == sa.bindparam("tenant_id"),
        quota_usage.c.user_id == sa.bindparam("user_id"),
        sa.or_(
            *(
                sa.and_(
                    quota_usage.c.period_type == sa.bindparam(f"type_{number}"),
                    quota_usage.c.period_start == sa.bindparam(f"start_{number}"),
                )
                for number in range(period_count)
            )
        ),
    )
    if for_update:
        # A stable lock order (writers also hold the per-user lock, see `user_lock_statement`).
        query = query.order_by(
            quota_usage.c.period_type, quota_usage.c.period_start, quota_usage.c.bucket
        ).with_for_update()
    name = f"usage of {period_count} periods (for update: {for_update})"
    prepared = Prepared(query, name)
    prepared.json_rows = json_rows(query, name)  # SQLite's (db/repos/json_rows.py)
    return prepared


# A day and a month, the periods of every turn and quota status: built now, so start-up compiles them.
_DAY_AND_MONTH: Final = [_usage_statement(2, for_update) for for_update in (False, True)]


def user_lock_statement(db: databases.Database, tenant_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
    """PostgreSQL: the statement that takes the user's quota lock for the rest of its transaction, literal
    SQL to open the transaction with (`transaction(first_statement=...)` sends it in BEGIN's round trip);
    None on SQLite, whose writers are serialized already.

    Every transaction that writes a user's quota rows (send, finalization, watchdog) takes this lock
    first, so they queue per user instead of deadlocking over rows created or locked in between their
    statements. The two-int advisory key space does not overlap the single-bigint keys used elsewhere.
    """
    if db.url.dialect != "postgresql":
        return None
    # Both values are ints computed here: nothing from outside is interpolated.
    return f"SELECT pg_advisory_xact_lock({int(ADVISORY_SPACE_QUOTA_USER)}, {_user_key(tenant_id, user_id)})"


def _user_key(tenant_id: uuid.UUID, user_id: uuid.UUID) -> int:
    digest = hashlib.blake2b(tenant_id.bytes + user_id.bytes, digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


async def apply_deltas(
    db: databases.Database,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    deltas: Iterable[BucketDelta],
    *,
    now: dt.datetime,
) -> None:
    """Add each delta to its row, creating the row when absent (one upsert per row).

    A negative reserve delta never takes `reserved_credits_micro` below zero: a release that finds less
    reserved than it returns (a ledger repaired by hand) clamps at zero instead of failing the finalizer.
    """
    merged = _merged(deltas)
    if not merged:
        return
    ordered = sorted(merged, key=lambda d: (d.period_type, d.period_start, d.bucket))
    if 1 < len(ordered) <= _MAX_ROWS_PER_UPSERT and all(
        getattr(delta, field) >= 0 for delta in ordered for field, _ in _DELTA_COLUMNS
    ):
        # Only additions (a turn's reserve, say): one statement for all rows.
        rows: dict[str, Any] = {}
        for index, delta in enumerate(ordered):
            rows.update(_row_values(tenant_id, user_id, delta, now, suffix=f"_{index}"))
        await _MULTI_UPSERTS[db.url.dialect, len(ordered)].execute(db, **rows)
        return
    if 1 < len(ordered) <= _MAX_ROWS_PER_UPSERT:
        # Some deltas are negative (a settlement releases its reserve): the rows that exist (all of them
        # but in a ledger repaired by hand, since the reserve created them) are updated in one statement,
        # and only the missing ones are upserted below.
        keyed: dict[str, Any] = {"tenant_id": tenant_id, "user_id": user_id}
        for index, delta in enumerate(ordered):
            keyed.update(_update_values(delta, now, suffix=f"_{index}"))
        updated = await _MULTI_UPDATES[db.url.dialect, len(ordered)].fetch_all(db, **keyed)
        found = {(row[0], _as_date(row[1]), row[2]) for row in updated}
        ordered = [delta for delta in ordered if delta.key not in found]
    upsert = _UPSERTS[db.url.dialect]
    for delta in ordered:
        values: dict[str, Any] = {
            "id": uuid.uuid4(),
            "tenant_id": tenant_id,
            "user_id": user_id,
            "period_type": delta.period_type,
            "period_start": delta.period_start,
            "bucket": delta.bucket,
            "updated_at": now,
        }
        for field, column in _DELTA_COLUMNS:
            amount = int(getattr(delta, field))
            values[column] = max(0, amount) if column == "reserved_credits_micro" else amount
            values[f"add_{column}"] = amount
        await upsert.execute(db, **values)


def _row_values(
    tenant_id: uuid.UUID, user_id: uuid.UUID, delta: BucketDelta, now: dt.datetime, *, suffix: str
) -> dict[str, Any]:
    values: dict[str, Any] = {
        f"id{suffix}": uuid.uuid4(),
        f"tenant_id{suffix}": tenant_id,
        f"user_id{suffix}": user_id,
        f"period_type{suffix}": delta.period_type,
        f"period_start{suffix}": delta.period_start,
        f"bucket{suffix}": delta.bucket,
        f"updated_at{suffix}": now,
    }
    for field, column in _DELTA_COLUMNS:
        values[f"{column}{suffix}"] = int(getattr(delta, field))
    return values


def _update_values(delta: BucketDelta, now: dt.datetime, *, suffix: str) -> dict[str, Any]:
    values: dict[str, Any] = {
        f"period_type{suffix}": delta.period_type,
        f"period_start{suffix}": delta.period_start,
        f"bucket{suffix}": delta.bucket,
        f"updated_at{suffix}": now,
    }
    for field, column in _DELTA_COLUMNS:
        values[f"add_{column}{suffix}"] = int(getattr(delta, field))
    return values


def _merged(deltas: Iterable[BucketDelta]) -> list[BucketDelta]:
    """One delta per row key (summed), in first-seen order: a statement never hits one row twice."""
    merged: dict[UsageKey, BucketDelta] = {}
    for delta in deltas:
        seen = merged.get(delta.key)
        if seen is None:
            merged[delta.key] = delta
            continue
        merged[delta.key] = BucketDelta(
            delta.period_type,
            delta.period_start,
            delta.bucket,
            **{field: getattr(seen, field) + getattr(delta, field) for field, _ in _DELTA_COLUMNS},
        )
    return list(merged.values())


def _upsert(dialect: str) -> Prepared:
    """Insert the row with the deltas as its values, or add them to the existing row (adding zero to a
    column changes nothing, so one statement serves every delta)."""
    insert = (pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert)(quota_usage)
    columns = ["id", "tenant_id", "user_id", "period_type", "period_start", "bucket", "updated_at"]
    columns += [column for _, column in _DELTA_COLUMNS]
    statement = insert.values({name: sa.bindparam(name, type_=quota_usage.c[name].type) for name in columns})
    updates: dict[str, Any] = {"updated_at": statement.excluded.updated_at}
    for _, column in _DELTA_COLUMNS:
        current = quota_usage.c[column]
        added = current + sa.bindparam(f"add_{column}", type_=sa.BigInteger())
        # A release never takes the reserve below zero (see apply_deltas).
        updates[column] = (
            sa.case((added < 0, 0), else_=added) if column == "reserved_credits_micro" else added
        )
    return Prepared(
        statement.on_conflict_do_update(index_elements=list(_KEY_COLUMNS), set_=updates),
        f"usage upsert ({dialect})",
        dialect=dialect,
    )


_UPSERTS: Final = {dialect: _upsert(dialect) for dialect in ("sqlite", "postgresql")}


def _multi_upsert(dialect: str, count: int) -> Prepared:
    """`count` rows of non-negative deltas in one upsert: each row's insert values are its deltas, so the
    conflict update adds `excluded`'s (a row key appears once: `_merged`)."""
    insert = (pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert)(quota_usage)
    columns = ["id", "tenant_id", "user_id", "period_type", "period_start", "bucket", "updated_at"]
    columns += [column for _, column in _DELTA_COLUMNS]
    statement = insert.values(
        [
            {name: sa.bindparam(f"{name}_{index}", type_=quota_usage.c[name].type) for name in columns}
            for index in range(count)
        ]
    )
    updates: dict[str, Any] = {"updated_at": statement.excluded.updated_at}
    for _, column in _DELTA_COLUMNS:
        updates[column] = quota_usage.c[column] + statement.excluded[column]
    return Prepared(
        statement.on_conflict_do_update(index_elements=list(_KEY_COLUMNS), set_=updates),
        f"usage upsert of {count} rows ({dialect})",
        dialect=dialect,
    )


def _multi_update(dialect: str, count: int) -> Prepared:
    """Add `count` rows' deltas (signed) to the user's existing rows in one statement, the reserve clamped
    at zero as in `_upsert`; returns the keys of the rows it changed. The deltas are a derived table of
    one-row SELECTs (SQLite names no VALUES columns); the join is on the rows' unique key."""
    names = ["period_type", "period_start", "bucket", "updated_at"]

    def bound(name: str, index: int) -> sa.Label[Any]:
        type_ = sa.BigInteger() if name.startswith("add_") else quota_usage.c[name].type
        value: sa.ColumnElement[Any] = sa.bindparam(f"{name}_{index}", type_=type_)
        if dialect == "postgresql":
            # A parameter in a SELECT list has no type to infer on PostgreSQL (text); SQLite needs none
            # (and its CAST AS DATE would make the date a number).
            value = sa.cast(value, type_)
        return value.label(name)

    names += [f"add_{column}" for _, column in _DELTA_COLUMNS]
    rows = sa.union_all(*(sa.select(*(bound(name, i) for name in names)) for i in range(count))).subquery("d")
    updates: dict[str, Any] = {"updated_at": rows.c.updated_at}
    for _, column in _DELTA_COLUMNS:
        added = quota_usage.c[column] + rows.c[f"add_{column}"]
        updates[column] = (
            sa.case((added < 0, 0), else_=added) if column == "reserved_credits_micro" else added
        )
    statement = (
        quota_usage.update()
        .where(
            quota_usage.c.tenant_id == sa.bindparam("tenant_id"),
            quota_usage.c.user_id == sa.bindparam("user_id"),
            quota_usage.c.period_type == rows.c.period_type,
            quota_usage.c.period_start == rows.c.period_start,
            quota_usage.c.bucket == rows.c.bucket,
        )
        .values(updates)
        .returning(quota_usage.c.period_type, quota_usage.c.period_start, quota_usage.c.bucket)
    )
    return Prepared(statement, f"usage update of {count} rows ({dialect})", dialect=dialect)


# A turn's reserve writes one row per period (day, month) and bucket: a few rows at most.
_MAX_ROWS_PER_UPSERT: Final = 8
_MULTI_UPDATES: Final = {
    (dialect, count): _multi_update(dialect, count)
    for dialect in ("sqlite", "postgresql")
    for count in range(2, _MAX_ROWS_PER_UPSERT + 1)
}
_MULTI_UPSERTS: Final = {
    (dialect, count): _multi_upsert(dialect, count)
    for dialect in ("sqlite", "postgresql")
    for count in range(2, _MAX_ROWS_PER_UPSERT + 1)
}


async def reserved_total(
    db: databases.Database, tenant_id: uuid.UUID, user_id: uuid.UUID | None = None
) -> int:
    """Sum of `reserved_credits_micro` over a tenant's rows (one user's, when given); 0 when none held."""
    query = sa.select(sa.func.coalesce(sa.func.sum(quota_usage.c.reserved_credits_micro), 0)).where(
        quota_usage.c.tenant_id == tenant_id
    )
    if user_id is not None:
        query = query.where(quota_usage.c.user_id == user_id)
    return int(await db.fetch_val(query) or 0)
