"""The outbox SQL: registration, sequencing, leases, guarded acks, polling; plain functions over `databases`.

Every write transaction here starts with a write or a row lock (PostgreSQL `FOR UPDATE SKIP LOCKED` where
rows are claimed; SQLite transactions are `BEGIN IMMEDIATE`, see db/engine.py), and every guarded UPDATE
uses RETURNING: `databases` does not report a reliable row count for UPDATE on either backend.
Times come from the caller (the application clock, see scheduler.py).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import databases
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from minichat_host.outbox import sql
from minichat_host.outbox.errors import LeaseLost, PartitionCountMismatch
from minichat_host.outbox.sql import DialectName, Sql
from minichat_host.outbox.tables import (
    outbox_dead_letters,
    outbox_partitions,
    outbox_processor,
    outbox_vacuum_counter,
)

SEQUENCER_BATCH = 1000
# SQLite sequences the partitions one wake-up found dirty in one transaction, up to this many at a time.
SEQUENCER_PARTITIONS_PER_TRANSACTION = 8

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


# PostgreSQL: one statement, so one round trip and no explicit transaction (BEGIN, the partition's lock,
# the move and COMMIT were four). The partition row's lock (SKIP LOCKED: another sequencer holds it, so
# nothing is moved and `locked` is 0) lasts until the statement ends. The rows moved are exactly those
# deleted (RETURNING), numbered in incoming-id order from the sequence the UPDATE reads. The statement's
# snapshot may predate another sequencer's commit that came just before this lock: its DELETE then skips
# the rows that sequencer deleted (READ COMMITTED skips rows a committed transaction deleted), and the
# UPDATE adds to the sequence that sequencer left (it re-reads the row's latest version), so seqs stay
# contiguous and each row is moved once.
_SEQUENCE_POSTGRESQL = Sql(
    """
    WITH locked AS (
        SELECT id FROM outbox_partitions WHERE id = $1 FOR UPDATE SKIP LOCKED
    ),
    moved AS (
        DELETE FROM outbox_incoming WHERE id IN (
            SELECT id FROM outbox_incoming
            WHERE partition_id = $1 AND EXISTS (SELECT 1 FROM locked)
            ORDER BY id LIMIT $2
        ) RETURNING id, body_id
    ),
    base AS (
        UPDATE outbox_partitions SET sequence = sequence + (SELECT count(*) FROM moved)
        WHERE id = $1 AND EXISTS (SELECT 1 FROM moved)
        RETURNING sequence - (SELECT count(*) FROM moved) AS start
    ),
    inserted AS (
        INSERT INTO outbox_outgoing (partition_id, seq, body_id, sequenced_at)
        SELECT $1, base.start + row_number() OVER (ORDER BY moved.id), moved.body_id, $3
        FROM moved CROSS JOIN base
        RETURNING seq
    )
    SELECT (SELECT count(*) FROM locked), (SELECT count(*) FROM inserted)
    """
)
# SQLite (the transaction holds the database write lock, so the three statements see the same rows).
_SEQUENCE_SQLITE_INSERT = Sql(
    """
    INSERT INTO outbox_outgoing (partition_id, seq, body_id, sequenced_at)
    SELECT $1, (SELECT sequence FROM outbox_partitions WHERE id = $1) + row_number() OVER (ORDER BY id),
           body_id, $3
    FROM (SELECT id, body_id FROM outbox_incoming WHERE partition_id = $1 ORDER BY id LIMIT $2)
    RETURNING seq
    """
)
_SEQUENCE_SQLITE_DELETE = Sql(
    """
    DELETE FROM outbox_incoming WHERE id IN (
        SELECT id FROM outbox_incoming WHERE partition_id = $1 ORDER BY id LIMIT $2
    )
    """
)
_SEQUENCE_SQLITE_BUMP = Sql("UPDATE outbox_partitions SET sequence = sequence + $2 WHERE id = $1")


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
    sequenced_at = sql.timestamp(dialect, now)
    if dialect == "postgresql":
        row = await sql.fetch_one(db, dialect, _SEQUENCE_POSTGRESQL, partition_id, batch, sequenced_at)
        assert row is not None  # the final SELECT always answers one row
        locked, moved = int(row[0]), int(row[1])
        return moved if locked else None
    async with db.transaction():
        moved = len(await sql.fetch(db, dialect, _SEQUENCE_SQLITE_INSERT, partition_id, batch, sequenced_at))
        if moved:
            await sql.execute_each(
                db,
                dialect,
                (_SEQUENCE_SQLITE_DELETE, (partition_id, batch)),
                (_SEQUENCE_SQLITE_BUMP, (partition_id, moved)),
            )
        return moved


async def sequence_partitions_sqlite(
    db: databases.Database, partition_ids: Sequence[int], now: dt.datetime, batch: int = SEQUENCER_BATCH
) -> dict[int, int]:
    """SQLite: `sequence_partition` for several partitions in one transaction (one BEGIN and COMMIT for a
    wake-up of the sequencer instead of one per partition; writers go one at a time on SQLite anyway).
    Returns how many rows each partition had sequenced."""
    sequenced_at = sql.timestamp("sqlite", now)
    moved: dict[int, int] = {}
    async with db.transaction():
        for partition_id in partition_ids:
            rows = await sql.fetch(db, "sqlite", _SEQUENCE_SQLITE_INSERT, partition_id, batch, sequenced_at)
            moved[partition_id] = count = len(rows)
            if count:
                await sql.execute_each(
                    db,
                    "sqlite",
                    (_SEQUENCE_SQLITE_DELETE, (partition_id, batch)),
                    (_SEQUENCE_SQLITE_BUMP, (partition_id, count)),
                )
    return moved


async def partitions_with_incoming(
    db: databases.Database, dialect: DialectName, partition_ids: Sequence[int]
) -> list[int]:
    """Partitions holding committed, not yet sequenced rows (the reconciler's query)."""
    ids = list(partition_ids)
    if not ids:
        return []
    rows = await sql.fetch(db, dialect, _incoming_sql(len(ids)), *ids)
    return [int(row[0]) for row in rows]


# --- polling and leases ---------------------------------------------------------------------------------


async def partitions_with_backlog(
    db: databases.Database, dialect: DialectName, partition_ids: Sequence[int], now: dt.datetime
) -> list[tuple[int, dt.datetime | None]]:
    """(partition id, retry_at) of partitions with sequenced, unacknowledged messages and no live lease."""
    ids = list(partition_ids)
    if not ids:
        return []
    rows = await sql.fetch(db, dialect, _backlog_sql(len(ids)), sql.timestamp(dialect, now), *ids)
    return [(int(row[0]), None if row[1] is None else sql.parse_timestamp(row[1])) for row in rows]


# The pollers run these every second: SQL text built once per partition count rather than a SQLAlchemy
# statement compiled per call (~1 ms of the event loop each, bench/stream.py per-chunk latency).
@functools.cache
def _incoming_sql(count: int) -> Sql:
    return Sql(
        "SELECT DISTINCT partition_id FROM outbox_incoming"
        f" WHERE partition_id IN ({sql.placeholders(1, count)})"
    )


@functools.cache
def _backlog_sql(count: int) -> Sql:
    return Sql(
        f"""
        SELECT p.id, r.retry_at
        FROM outbox_partitions p JOIN outbox_processor r ON r.partition_id = p.id
        WHERE p.id IN ({sql.placeholders(2, count)})
          AND p.sequence > r.processed_seq
          AND (r.locked_by IS NULL OR r.locked_until < $1)
        """
    )


_BATCH = Sql(
    """
    SELECT o.seq, b.payload, b.payload_type, b.created_at
    FROM outbox_outgoing o JOIN outbox_body b ON b.id = o.body_id
    WHERE o.partition_id = $1 AND o.seq > $2
    ORDER BY o.seq LIMIT $3
    """
)
_TAKEABLE = """
    partition_id = $1
    AND (locked_by IS NULL OR locked_until < $4 OR locked_by = $2)
    AND (retry_at IS NULL OR retry_at <= $4)
"""
# SET expressions see the old row: a lease still marked with a holder was never acked or released.
_ACQUIRE_SET = """
    locked_by = $2, locked_until = $3, attempts = attempts + 1,
    last_error = CASE WHEN locked_by IS NOT NULL THEN $5 || locked_by || ' expired before its ack'
                      ELSE last_error END
"""
# SQLite: the lease in one statement, taken only when the partition has something past the cursor (idle
# polls never touch `attempts`); the batch is read after it.
_ACQUIRE_IF_PENDING = Sql(
    f"""
    UPDATE outbox_processor SET {_ACQUIRE_SET}
    WHERE {_TAKEABLE}
      AND EXISTS (
          SELECT 1 FROM outbox_outgoing pending
          WHERE pending.partition_id = $1 AND pending.seq > outbox_processor.processed_seq
      )
    RETURNING processed_seq, attempts, last_error
    """
)
# PostgreSQL: the lease and its first batch in one statement (no BEGIN / COMMIT round trips). The lease is
# taken only when the partition has something past the cursor, so idle polls never touch `attempts`; the
# batch is read in the UPDATE's snapshot, the one the EXISTS saw.
_ACQUIRE_WITH_BATCH = Sql(
    f"""
    WITH lease AS (
        UPDATE outbox_processor SET {_ACQUIRE_SET}
        WHERE partition_id = (
            SELECT partition_id FROM outbox_processor WHERE {_TAKEABLE} FOR UPDATE SKIP LOCKED
        )
        AND EXISTS (
            SELECT 1 FROM outbox_outgoing pending
            WHERE pending.partition_id = $1 AND pending.seq > outbox_processor.processed_seq
        )
        RETURNING processed_seq, attempts, last_error
    )
    SELECT lease.processed_seq, lease.attempts, lease.last_error,
           batch.seq, batch.payload, batch.payload_type, batch.created_at
    FROM lease LEFT JOIN LATERAL (
        SELECT o.seq, b.payload, b.payload_type, b.created_at
        FROM outbox_outgoing o JOIN outbox_body b ON b.id = o.body_id
        WHERE o.partition_id = $1 AND o.seq > lease.processed_seq
        ORDER BY o.seq LIMIT $6
    ) batch ON true
    ORDER BY batch.seq
    """
)
_ACK = Sql(
    """
    UPDATE outbox_processor
    SET processed_seq = $4, attempts = $5, last_error = $6, retry_at = $7, locked_by = $8, locked_until = $9
    WHERE partition_id = $1 AND locked_by = $2 AND processed_seq = $3
    RETURNING partition_id
    """
)
# PostgreSQL: the ack of a batch that ends the turn (no dead letters, lease given back) in one statement.
_ACK_AND_BUMP = Sql(
    """
    WITH acked AS (
        UPDATE outbox_processor
        SET processed_seq = $4, attempts = $5, last_error = $6, retry_at = $7, locked_by = $8,
            locked_until = $9
        WHERE partition_id = $1 AND locked_by = $2 AND processed_seq = $3
        RETURNING partition_id
    ), bumped AS (
        UPDATE outbox_vacuum_counter SET counter = counter + 1
        WHERE partition_id = (SELECT partition_id FROM acked) AND $10::boolean
    )
    SELECT partition_id FROM acked
    """
)
_BUMP_VACUUM = Sql("UPDATE outbox_vacuum_counter SET counter = counter + 1 WHERE partition_id = $1")
_RELEASE_EMPTY = Sql(
    """
    UPDATE outbox_processor SET locked_by = NULL, locked_until = NULL, attempts = 0
    WHERE partition_id = $1 AND locked_by = $2
    """
)
_RELEASE = Sql(
    """
    UPDATE outbox_processor
    SET locked_by = NULL, locked_until = NULL,
        attempts = CASE WHEN $3 AND attempts > 0 THEN attempts - 1 ELSE attempts END
    WHERE partition_id = $1 AND locked_by = $2
    RETURNING partition_id
    """
)


async def _fetch_batch(
    db: databases.Database, dialect: DialectName, partition_id: int, after_seq: int, limit: int
) -> list[OutgoingRow]:
    rows = await sql.fetch(db, dialect, _BATCH, partition_id, after_seq, limit)
    return [OutgoingRow(int(r[0]), bytes(r[1]), str(r[2]), sql.parse_timestamp(r[3])) for r in rows]


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

    The lease is a conditional UPDATE: free, expired, or already ours, past any retry backoff, and only
    with something past the cursor, so idle polls never touch `attempts`. PostgreSQL takes the lease and
    reads the batch in one statement (`_ACQUIRE_WITH_BATCH`); SQLite reads the batch after the lease.
    """
    args = (partition_id, worker, sql.timestamp(dialect, lease_until), sql.timestamp(dialect, now))
    if dialect == "postgresql":
        return await _acquire_with_batch(db, partition_id, worker, args, batch)
    # SQLite: the lease alone is one statement (taken only with something past the cursor, as on
    # PostgreSQL), no BEGIN / COMMIT around it; the batch is read under the lease, where only appends
    # past the cursor can happen (the scheduler's SQLite writes are serialised in this process).
    row = await sql.fetch_one(db, dialect, _ACQUIRE_IF_PENDING, *args, INTERRUPTED_PREFIX)
    if row is None:
        return None
    rows = await _fetch_batch(db, dialect, partition_id, int(row[0]), batch)
    if not rows:
        # Not expected (the lease was taken because a row was there): give it back.
        await release_lease(db, dialect, partition_id, worker, uncount_attempt=True)
        return None
    return Lease(int(row[0]), int(row[1]), str(row[2] or "").startswith(INTERRUPTED_PREFIX), rows)


async def _acquire_with_batch(
    db: databases.Database, partition_id: int, worker: str, args: tuple[Any, ...], batch: int
) -> Lease | None:
    found = await sql.fetch(db, "postgresql", _ACQUIRE_WITH_BATCH, *args, INTERRUPTED_PREFIX, batch)
    if not found:
        return None
    head = found[0]
    rows = [OutgoingRow(int(r[3]), bytes(r[4]), str(r[5]), sql.parse_timestamp(r[6])) for r in found]
    if head[3] is None:
        # Not expected (the batch is read in the snapshot that found it non-empty): give the lease back.
        await release_lease(db, "postgresql", partition_id, worker, uncount_attempt=True)
        return None
    interrupted = str(head[2] or "").startswith(INTERRUPTED_PREFIX)
    return Lease(int(head[0]), int(head[1]), interrupted, rows)


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
    db: databases.Database, dialect: DialectName, partition_id: int, worker: str, plan: AckPlan
) -> list[OutgoingRow]:
    """Advance the cursor and write dead letters in one transaction, only while we hold the lease.

    Raises LeaseLost (and rolls everything back, dead letters included) when the lease moved to another
    worker or the cursor is not where this batch started. Returns the next batch when the lease is kept.
    On PostgreSQL the common ack - no dead letters, lease given back - is one statement (`_ACK_AND_BUMP`).
    """
    keep = plan.extend_until is not None
    rows: list[OutgoingRow] = []
    if dialect == "postgresql" and not keep and not plan.dead_letters:
        guarded = await sql.fetch_one(
            db,
            dialect,
            _ACK_AND_BUMP,
            partition_id,
            worker,
            plan.expected_seq,
            plan.new_seq,
            plan.attempts,
            plan.last_error,
            plan.retry_at,
            None,
            None,
            plan.new_seq > plan.expected_seq,
        )
        if guarded is None:
            raise LeaseLost(f"partition {partition_id}: lease no longer held by {worker}")
        return rows
    if dialect == "sqlite" and not keep and not plan.dead_letters:
        # The same ack as two statements without BEGIN / COMMIT: the guarded update is the one that
        # matters; the vacuum counter only schedules clean-up (a bump lost to a crash in between delays
        # it until the partition's next ack).
        guarded = await sql.fetch_one(db, dialect, _ACK, *_ack_args(dialect, worker, partition_id, plan))
        if guarded is None:
            raise LeaseLost(f"partition {partition_id}: lease no longer held by {worker}")
        if plan.new_seq > plan.expected_seq:
            await sql.execute(db, dialect, _BUMP_VACUUM, partition_id)
        return rows
    async with db.transaction():
        guarded = await sql.fetch_one(db, dialect, _ACK, *_ack_args(dialect, worker, partition_id, plan))
        if guarded is None:
            raise LeaseLost(f"partition {partition_id}: lease no longer held by {worker}")
        if plan.dead_letters:
            await db.execute(sa.insert(outbox_dead_letters).values(plan.dead_letters))
        if plan.new_seq > plan.expected_seq:
            await sql.execute(db, dialect, _BUMP_VACUUM, partition_id)
        if keep:
            rows = await _fetch_batch(db, dialect, partition_id, plan.new_seq, plan.next_batch)
            if not rows:
                await sql.execute(db, dialect, _RELEASE_EMPTY, partition_id, worker)
    return rows


def _ack_args(dialect: DialectName, worker: str, partition_id: int, plan: AckPlan) -> tuple[Any, ...]:
    keep = plan.extend_until is not None
    return (
        partition_id,
        worker,
        plan.expected_seq,
        plan.new_seq,
        plan.attempts,
        plan.last_error,
        None if plan.retry_at is None else sql.timestamp(dialect, plan.retry_at),
        worker if keep else None,
        None if plan.extend_until is None else sql.timestamp(dialect, plan.extend_until),
    )


async def release_lease(
    db: databases.Database, dialect: DialectName, partition_id: int, worker: str, *, uncount_attempt: bool
) -> bool:
    """Give the lease back without moving the cursor (shutdown); optionally undo this delivery's attempt."""
    return await sql.fetch_one(db, dialect, _RELEASE, partition_id, worker, uncount_attempt) is not None


async def release_all_leases(db: databases.Database, partition_ids: Sequence[int], worker: str) -> list[int]:
    """Release every lease `worker` still holds among `partition_ids` (shutdown); the ids released."""
    rows = await db.fetch_all(
        sa.update(outbox_processor)
        .where(P.partition_id.in_(list(partition_ids)), P.locked_by == worker)
        .values(locked_by=None, locked_until=None)
        .returning(P.partition_id)
    )
    return [int(row[0]) for row in rows]
