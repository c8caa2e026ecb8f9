"""The outbox SQL: registration, sequencing, leases, guarded acks, polling; plain functions over `databases`.

Every write transaction here starts with a write or a row lock (PostgreSQL `FOR UPDATE SKIP LOCKED` where
rows are claimed; SQLite transactions are `BEGIN IMMEDIATE`, see db/engine.py), and every guarded UPDATE
uses RETURNING: `databases` does not report a reliable row count for UPDATE on either backend.
Times come from the caller (the application clock, see scheduler.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import databases
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from minichat_host.outbox.errors import LeaseLost, PartitionCountMismatch
from minichat_host.outbox.tables import (
    outbox_body,
    outbox_dead_letters,
    outbox_incoming,
    outbox_outgoing,
    outbox_partitions,
    outbox_processor,
    outbox_vacuum_counter,
)

DialectName = Literal["sqlite", "postgresql"]
SEQUENCER_BATCH = 1000

P = outbox_processor.c


class OutgoingRow(NamedTuple):
    seq: int
    payload: bytes
    payload_type: str
    created_at: dt.datetime


# last_error written when a lease is taken over from a holder that never acked or released it.
INTERRUPTED_PREFIX = "interrupted: the lease of "


class Lease(NamedTuple):
    """A taken lease: the cursor, the head's attempt count including this delivery, and the batch.

    `interrupted`: the previous holder neither acked nor released (crash, lost lease), so every message
    of the batch may have been delivered before - not only the head.
    """

    processed_seq: int
    attempts: int
    interrupted: bool
    rows: list[OutgoingRow]


@dataclass(frozen=True)
class Partition:
    id: int
    queue: str
    index: int


def _insert_ignore(dialect: DialectName, table: sa.Table) -> Any:
    if dialect == "postgresql":
        return pg_dialect.insert(table).on_conflict_do_nothing()
    return sqlite_dialect.insert(table).on_conflict_do_nothing()


# --- registration ---------------------------------------------------------------------------------------


async def ensure_partitions(
    db: databases.Database, dialect: DialectName, queue: str, partitions: int
) -> dict[int, int]:
    """Create the partition, processor and vacuum rows of `queue` if missing; {partition index: id}.

    Idempotent and safe when replicas register at once (insert-ignore); a different existing partition
    count is an error rather than a silent re-hash of every key.
    """
    select_rows = sa.select(outbox_partitions.c.partition, outbox_partitions.c.id).where(
        outbox_partitions.c.queue == queue
    )
    async with db.transaction():
        rows = await db.fetch_all(select_rows)
        if rows and len(rows) != partitions:
            raise PartitionCountMismatch(
                f"queue {queue!r} has {len(rows)} partitions in the database but is registered with "
                f"{partitions}; changing outbox.num_partitions needs an empty queue and a migration"
            )
        if len(rows) < partitions:
            await db.execute(
                _insert_ignore(dialect, outbox_partitions).values(
                    [{"queue": queue, "partition": index, "sequence": 0} for index in range(partitions)]
                )
            )
            rows = await db.fetch_all(select_rows)
        ids = {int(row[0]): int(row[1]) for row in rows}
        await db.execute(
            _insert_ignore(dialect, outbox_processor).values(
                [{"partition_id": pid, "processed_seq": 0, "attempts": 0} for pid in ids.values()]
            )
        )
        await db.execute(
            _insert_ignore(dialect, outbox_vacuum_counter).values(
                [{"partition_id": pid, "counter": 0} for pid in ids.values()]
            )
        )
    return ids


async def load_partitions(db: databases.Database, queues: Sequence[str] | None = None) -> list[Partition]:
    statement = sa.select(outbox_partitions.c.id, outbox_partitions.c.queue, outbox_partitions.c.partition)
    if queues is not None:
        statement = statement.where(outbox_partitions.c.queue.in_(list(queues)))
    rows = await db.fetch_all(statement.order_by(outbox_partitions.c.queue, outbox_partitions.c.partition))
    return [Partition(int(row[0]), str(row[1]), int(row[2])) for row in rows]


# --- sequencing -----------------------------------------------------------------------------------------


async def sequence_partition(
    db: databases.Database,
    dialect: DialectName,
    partition_id: int,
    now: dt.datetime,
    batch: int = SEQUENCER_BATCH,
) -> int | None:
    """Move up to `batch` committed incoming rows to outgoing with the next contiguous seqs (FIFO by id).

    Returns how many were sequenced, or None when another sequencer holds the partition (PostgreSQL).
    """
    async with db.transaction():
        if dialect == "postgresql":
            locked = await db.fetch_one(
                sa.select(outbox_partitions.c.id)
                .where(outbox_partitions.c.id == partition_id)
                .with_for_update(skip_locked=True)
            )
            if locked is None:
                return None
        rows = await db.fetch_all(
            sa.select(outbox_incoming.c.id, outbox_incoming.c.body_id)
            .where(outbox_incoming.c.partition_id == partition_id)
            .order_by(outbox_incoming.c.id)
            .limit(batch)
        )
        if not rows:
            return 0
        count = len(rows)
        await db.execute(
            sa.delete(outbox_incoming).where(outbox_incoming.c.id.in_([int(row[0]) for row in rows]))
        )
        last = await db.fetch_val(
            sa.update(outbox_partitions)
            .where(outbox_partitions.c.id == partition_id)
            .values(sequence=outbox_partitions.c.sequence + count)
            .returning(outbox_partitions.c.sequence)
        )
        first = int(last) - count + 1
        await db.execute(
            sa.insert(outbox_outgoing).values(
                [
                    {
                        "partition_id": partition_id,
                        "seq": first + offset,
                        "body_id": int(row[1]),
                        "sequenced_at": now,
                    }
                    for offset, row in enumerate(rows)
                ]
            )
        )
    return count


async def partitions_with_incoming(db: databases.Database, partition_ids: Sequence[int]) -> list[int]:
    """Partitions holding committed, not yet sequenced rows (the reconciler's query)."""
    rows = await db.fetch_all(
        sa.select(outbox_incoming.c.partition_id)
        .where(outbox_incoming.c.partition_id.in_(list(partition_ids)))
        .distinct()
    )
    return [int(row[0]) for row in rows]


# --- polling and leases ---------------------------------------------------------------------------------


async def partitions_with_backlog(
    db: databases.Database, partition_ids: Sequence[int], now: dt.datetime
) -> list[tuple[int, dt.datetime | None]]:
    """(partition id, retry_at) of partitions with sequenced, unacknowledged messages and no live lease."""
    rows = await db.fetch_all(
        sa.select(outbox_partitions.c.id, P.retry_at)
        .select_from(outbox_partitions.join(outbox_processor, P.partition_id == outbox_partitions.c.id))
        .where(
            outbox_partitions.c.id.in_(list(partition_ids)),
            outbox_partitions.c.sequence > P.processed_seq,
            sa.or_(P.locked_by.is_(None), P.locked_until < now),
        )
    )
    return [(int(row[0]), row[1]) for row in rows]


def _batch_query(partition_id: int, after_seq: int, limit: int) -> sa.Select[Any]:
    return (
        sa.select(
            outbox_outgoing.c.seq, outbox_body.c.payload, outbox_body.c.payload_type, outbox_body.c.created_at
        )
        .select_from(outbox_outgoing.join(outbox_body, outbox_body.c.id == outbox_outgoing.c.body_id))
        .where(outbox_outgoing.c.partition_id == partition_id, outbox_outgoing.c.seq > after_seq)
        .order_by(outbox_outgoing.c.seq)
        .limit(limit)
    )


async def _fetch_batch(
    db: databases.Database, partition_id: int, after_seq: int, limit: int
) -> list[OutgoingRow]:
    rows = await db.fetch_all(_batch_query(partition_id, after_seq, limit))
    return [OutgoingRow(int(row[0]), bytes(row[1]), str(row[2]), row[3]) for row in rows]


async def acquire_lease(
    db: databases.Database,
    dialect: DialectName,
    partition_id: int,
    worker: str,
    now: dt.datetime,
    lease_until: dt.datetime,
    batch: int,
) -> Lease | None:
    """Take the partition's lease and read the next batch, or None (held elsewhere, backing off, or empty).

    The lease is a conditional UPDATE: free, expired, or already ours, and past any retry backoff. With
    nothing to deliver the transaction rolls back, so idle polls never touch `attempts`.
    """
    takeable = sa.and_(
        P.partition_id == partition_id,
        sa.or_(P.locked_by.is_(None), P.locked_until < now, P.locked_by == worker),
        sa.or_(P.retry_at.is_(None), P.retry_at <= now),
    )
    where: sa.ColumnElement[bool] = takeable
    if dialect == "postgresql":
        where = P.partition_id.in_(
            sa.select(P.partition_id).where(takeable).with_for_update(skip_locked=True)
        )
    # SET expressions see the old row: a lease still marked with a holder was never acked or released.
    interrupted = sa.literal(INTERRUPTED_PREFIX) + P.locked_by + sa.literal(" expired before its ack")
    statement = (
        sa.update(outbox_processor)
        .where(where)
        .values(
            locked_by=worker,
            locked_until=lease_until,
            attempts=P.attempts + 1,
            last_error=sa.case((P.locked_by.is_not(None), interrupted), else_=P.last_error),
        )
        .returning(P.processed_seq, P.attempts, P.last_error)
    )
    transaction = await db.transaction()
    try:
        row = await db.fetch_one(statement)
        rows = [] if row is None else await _fetch_batch(db, partition_id, int(row[0]), batch)
    except BaseException:
        await transaction.rollback()
        raise
    if row is None or not rows:
        await transaction.rollback()
        return None
    await transaction.commit()
    return Lease(int(row[0]), int(row[1]), str(row[2] or "").startswith(INTERRUPTED_PREFIX), rows)


class AckPlan(NamedTuple):
    """What a guarded ack writes. `extend_until` set = keep the lease and read the next batch."""

    expected_seq: int
    new_seq: int
    attempts: int
    last_error: str | None
    retry_at: dt.datetime | None
    dead_letters: list[dict[str, Any]]
    extend_until: dt.datetime | None = None
    next_batch: int = 0


async def guarded_ack(
    db: databases.Database, partition_id: int, worker: str, plan: AckPlan
) -> list[OutgoingRow]:
    """Advance the cursor and write dead letters in one transaction, only while we hold the lease.

    Raises LeaseLost (and rolls everything back, dead letters included) when the lease moved to another
    worker or the cursor is not where this batch started. Returns the next batch when the lease is kept.
    """
    keep = plan.extend_until is not None
    rows: list[OutgoingRow] = []
    async with db.transaction():
        guarded = await db.fetch_one(
            sa.update(outbox_processor)
            .where(
                P.partition_id == partition_id,
                P.locked_by == worker,
                P.processed_seq == plan.expected_seq,
            )
            .values(
                processed_seq=plan.new_seq,
                attempts=plan.attempts,
                last_error=plan.last_error,
                retry_at=plan.retry_at,
                locked_by=worker if keep else None,
                locked_until=plan.extend_until,
            )
            .returning(P.partition_id)
        )
        if guarded is None:
            raise LeaseLost(f"partition {partition_id}: lease no longer held by {worker}")
        if plan.dead_letters:
            await db.execute(sa.insert(outbox_dead_letters).values(plan.dead_letters))
        if plan.new_seq > plan.expected_seq:
            await db.execute(
                sa.update(outbox_vacuum_counter)
                .where(outbox_vacuum_counter.c.partition_id == partition_id)
                .values(counter=outbox_vacuum_counter.c.counter + 1)
            )
        if keep:
            rows = await _fetch_batch(db, partition_id, plan.new_seq, plan.next_batch)
            if not rows:
                await db.execute(
                    sa.update(outbox_processor)
                    .where(P.partition_id == partition_id, P.locked_by == worker)
                    .values(locked_by=None, locked_until=None, attempts=0)
                )
    return rows


async def release_lease(
    db: databases.Database, partition_id: int, worker: str, *, uncount_attempt: bool
) -> bool:
    """Give the lease back without moving the cursor (shutdown); optionally undo this delivery's attempt."""
    values: dict[str, Any] = {"locked_by": None, "locked_until": None}
    if uncount_attempt:
        values["attempts"] = sa.case((P.attempts > 0, P.attempts - 1), else_=0)
    row = await db.fetch_one(
        sa.update(outbox_processor)
        .where(P.partition_id == partition_id, P.locked_by == worker)
        .values(**values)
        .returning(P.partition_id)
    )
    return row is not None


async def release_all_leases(db: databases.Database, partition_ids: Sequence[int], worker: str) -> list[int]:
    """Release every lease `worker` still holds among `partition_ids` (shutdown); the ids released."""
    rows = await db.fetch_all(
        sa.update(outbox_processor)
        .where(P.partition_id.in_(list(partition_ids)), P.locked_by == worker)
        .values(locked_by=None, locked_until=None)
        .returning(P.partition_id)
    )
    return [int(row[0]) for row in rows]
