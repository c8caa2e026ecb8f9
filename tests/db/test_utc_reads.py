"""Timestamps selected through `utc_read` come back exact and aware UTC on both engines: on PostgreSQL as
epoch microseconds made datetimes in Python (reads.py), on SQLite as parsed text."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator

import databases
import pytest
import sqlalchemy as sa

from minichat_host.db.engine import connect_database
from minichat_host.db.prepared import Prepared
from minichat_host.db.repos.reads import utc_from_micros, utc_read
from minichat_host.db.tables import UtcDateTime

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_metadata = sa.MetaData()
_stamps = sa.Table(
    "utc_read_stamps",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("at", UtcDateTime, nullable=True),
)
_READ = Prepared(sa.select(_stamps.c.id, utc_read(_stamps.c.at)).order_by(_stamps.c.id), "utc read test")

VALUES = [
    dt.datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 7, 1, 2, 3, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 7, 1, 2, 3, 999999, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 7, 1, 2, 3, 500000, tzinfo=dt.UTC),
    dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
    dt.datetime(1900, 2, 28, 12, 0, 0, 1, tzinfo=dt.UTC),
    dt.datetime(2106, 2, 7, 6, 28, 15, 999999, tzinfo=dt.UTC),  # the float path's last second
    dt.datetime(2106, 2, 7, 6, 28, 16, 1, tzinfo=dt.UTC),
    dt.datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=dt.UTC),
    dt.datetime.max.replace(tzinfo=dt.UTC),  # asyncpg writes (and reads) PostgreSQL's infinity
    dt.datetime.min.replace(tzinfo=dt.UTC),
    dt.datetime(1, 1, 2, tzinfo=dt.UTC),
    dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    None,
]


@pytest.fixture
async def stamps_db(db_url: str, engine_name: str) -> AsyncIterator[databases.Database]:
    db = await connect_database(db_url)
    try:
        kind = "TIMESTAMPTZ" if engine_name == "postgresql" else "DATETIME"
        await db.execute(sa.text(f"CREATE TABLE utc_read_stamps (id INTEGER PRIMARY KEY, at {kind})"))
        await db.execute_many(_stamps.insert(), [{"id": i, "at": at} for i, at in enumerate(VALUES)])
        yield db
    finally:
        await db.disconnect()


async def test_timestamps_read_exact_and_aware_utc(stamps_db: databases.Database) -> None:
    expected = [None if at is None else at.astimezone(dt.UTC) for at in VALUES]
    prepared = [row.values()[1] for row in await _READ.fetch_all(stamps_db)]
    through_databases = [
        row["at"]
        for row in await stamps_db.fetch_all(sa.select(utc_read(_stamps.c.at)).order_by(_stamps.c.id))
    ]
    for read in (prepared, through_databases):
        assert read == expected
        assert all(at is None or (type(at) is dt.datetime and at.tzinfo is dt.UTC) for at in read)


def test_micros_become_the_exact_datetime() -> None:
    rng = random.Random(7)
    edges = [0, 1, 499_999, 500_000, 999_999, 2**32 * 1_000_000 - 1, 2**32 * 1_000_000, -1, -1_000_001]
    assert utc_from_micros(2**63 - 1) == dt.datetime.max.replace(tzinfo=dt.UTC)
    assert utc_from_micros(-(2**63)) == dt.datetime.min.replace(tzinfo=dt.UTC)
    samples = edges + [rng.randrange(0, 2**32 * 1_000_000) for _ in range(200_000)]
    samples += [rng.randrange(-(10**16), 2 * 10**17) for _ in range(10_000)]
    for micros in samples:
        assert utc_from_micros(micros) == _EPOCH + dt.timedelta(microseconds=micros), micros
