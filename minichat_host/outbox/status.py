"""`status()`: per queue and partition backlog, cursor, lease, attempts, last error, oldest age, dead letters.

A plain async function over `databases.Database`, so the CLI and the admin API can call it from any
process (it only reads).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Sequence

import databases

from minichat_host.outbox import sql
from minichat_host.outbox.enqueue import Clock, utc_now
from minichat_host.outbox.models import QueueStatus
from minichat_host.outbox.sql import DialectName, Sql


async def queue_status(
    db: databases.Database,
    queues: Sequence[str] | None = None,
    *,
    clock: Clock = utc_now,
    dialect: DialectName | None = None,
) -> list[QueueStatus]:
    """One QueueStatus per partition of `queues` (all queues in the database when None)."""
    dialect = dialect or _dialect_of(db)
    names = None if queues is None else list(queues)
    if names is None:
        rows = await sql.fetch(db, dialect, _ALL_PARTITIONS)
    elif names:
        rows = await sql.fetch(db, dialect, _partitions_sql(len(names)), *names)
    else:
        rows = []
    if not rows:
        return []
    ids = [int(row[0]) for row in rows]
    # The server refreshes its metrics from here every few seconds: yield between the statements rather
    # than hold the loop for the lot.
    await asyncio.sleep(0)
    incoming_rows = await sql.fetch(db, dialect, _incoming_sql(len(ids)), *ids)
    await asyncio.sleep(0)
    head_rows = await sql.fetch(db, dialect, _head_sql(len(ids)), *ids)
    await asyncio.sleep(0)
    dead_rows = await sql.fetch(db, dialect, _dead_sql(len(ids)), *ids)
    unsequenced = {int(row[0]): int(row[1]) for row in incoming_rows}
    oldest: dict[int, dt.datetime] = {}
    for row in incoming_rows:
        oldest[int(row[0])] = sql.parse_timestamp(row[2])
    for row in head_rows:
        created = sql.parse_timestamp(row[1])
        pid = int(row[0])
        oldest[pid] = min(created, oldest.get(pid, created))
    dead = {int(row[0]): int(row[1]) for row in dead_rows}
    now = clock()
    result = []
    for row in rows:
        pid = int(row[0])
        waiting = unsequenced.get(pid, 0)
        sequenced_backlog = max(int(row[3]) - int(row[4]), 0)
        backlog = sequenced_backlog + waiting
        age = (now - oldest[pid]).total_seconds() if backlog and pid in oldest else None
        result.append(
            QueueStatus(
                queue=str(row[1]),
                partition=int(row[2]),
                partition_id=pid,
                last_seq=int(row[3]),
                processed_seq=int(row[4]),
                backlog=backlog,
                unsequenced=waiting,
                attempts=int(row[5]),
                last_error=row[6],
                locked_by=row[7],
                locked_until=_optional_utc(row[8]),
                retry_at=_optional_utc(row[9]),
                oldest_pending_age_seconds=None if age is None else max(age, 0.0),
                dead_letters=dead.get(pid, 0),
            )
        )
    return result


def _optional_utc(value: dt.datetime | str | None) -> dt.datetime | None:
    return None if value is None else sql.parse_timestamp(value)


def _dialect_of(db: databases.Database) -> DialectName:
    return "postgresql" if db.url.dialect in ("postgresql", "postgres") else "sqlite"


# SQL text built once per partition (or queue) count: the server runs these every reconcile interval, and
# compiling the equivalent SQLAlchemy statements took ~7 ms of the event loop per refresh (bench/stream.py
# per-chunk latency).
_PARTITIONS = """
    SELECT p.id, p.queue, p.partition, p.sequence, r.processed_seq, r.attempts, r.last_error,
           r.locked_by, r.locked_until, r.retry_at
    FROM outbox_partitions p JOIN outbox_processor r ON r.partition_id = p.id
"""
_ALL_PARTITIONS = Sql(f"{_PARTITIONS} ORDER BY p.queue, p.partition")


@functools.cache
def _partitions_sql(count: int) -> Sql:
    return Sql(f"{_PARTITIONS} WHERE p.queue IN ({sql.placeholders(1, count)}) ORDER BY p.queue, p.partition")


@functools.cache
def _incoming_sql(count: int) -> Sql:
    """Committed but not yet sequenced: count and oldest enqueue time per partition."""
    return Sql(
        f"""
        SELECT i.partition_id, count(*), min(b.created_at)
        FROM outbox_incoming i JOIN outbox_body b ON b.id = i.body_id
        WHERE i.partition_id IN ({sql.placeholders(1, count)})
        GROUP BY i.partition_id
        """
    )


@functools.cache
def _head_sql(count: int) -> Sql:
    """The head (processed_seq + 1) is the oldest sequenced message still waiting."""
    return Sql(
        f"""
        SELECT o.partition_id, b.created_at
        FROM outbox_outgoing o
        JOIN outbox_body b ON b.id = o.body_id
        JOIN outbox_processor r ON r.partition_id = o.partition_id AND o.seq = r.processed_seq + 1
        WHERE o.partition_id IN ({sql.placeholders(1, count)})
        """
    )


@functools.cache
def _dead_sql(count: int) -> Sql:
    return Sql(
        f"""
        SELECT partition_id, count(*) FROM outbox_dead_letters
        WHERE partition_id IN ({sql.placeholders(1, count)}) AND status = 'pending'
        GROUP BY partition_id
        """
    )
