"""Dead letters: list, inspect, replay (back at the end of their partition), discard, and the two-phase API.

Lifecycle (original §1.9): `pending → reprocessing → resolved`, `reprocessing → pending` (reject),
`pending → discarded`; a `reprocessing` row whose `deadline` passed can be claimed again.
`replay()` is claim + re-enqueue + resolve in one transaction (or, with `batch_size`, in one transaction
per batch); `claim()` / `resolve()` / `reject()` are for callers that process dead letters themselves.
Every function is a plain async function over `databases.Database` (CLI, admin API and the scheduler
share them; they work while the server runs).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

import databases
import msgspec
import sqlalchemy as sa

from minichat_host.outbox.enqueue import Clock, utc_now
from minichat_host.outbox.models import DeadLetter, DeadLetterFilter, DeadLetterStatus
from minichat_host.outbox.sql import DialectName
from minichat_host.outbox.store import SEQUENCER_BATCH, sequence_partition
from minichat_host.outbox.tables import (
    DEAD_LETTER_STATUSES,
    outbox_body,
    outbox_dead_letters,
    outbox_incoming,
    outbox_partitions,
)

D = outbox_dead_letters.c
DEFAULT_CLAIM_SECONDS = 300.0
REPLAY_CLAIM_SECONDS = 60.0

# `progress(done, total)`: called with (0, total) before the first batch and after every batch.
Progress = Callable[[int, int], None]

_COLUMNS = (
    D.id,
    outbox_partitions.c.queue,
    outbox_partitions.c.partition,
    D.partition_id,
    D.seq,
    D.payload,
    D.payload_type,
    D.created_at,
    D.failed_at,
    D.last_error,
    D.attempts,
    D.status,
    D.completed_at,
    D.deadline,
)


def _to_dead_letter(row: Any) -> DeadLetter:
    return DeadLetter(
        id=int(row[0]),
        queue=str(row[1]),
        partition=int(row[2]),
        partition_id=int(row[3]),
        seq=int(row[4]),
        payload=bytes(row[5]),
        payload_type=str(row[6]),
        created_at=row[7],
        failed_at=row[8],
        last_error=str(row[9]),
        attempts=int(row[10]),
        status=row[11],
        completed_at=row[12],
        deadline=row[13],
    )


def _scope(scope: DeadLetterFilter | None) -> list[sa.ColumnElement[bool]]:
    if scope is None:
        return []
    conditions: list[sa.ColumnElement[bool]] = []
    if scope.ids is not None:
        conditions.append(D.id.in_(list(scope.ids)))
    if scope.payload_type is not None:
        conditions.append(D.payload_type == scope.payload_type)
    if scope.queue is not None or scope.partition is not None:
        partitions = sa.select(outbox_partitions.c.id)
        if scope.queue is not None:
            partitions = partitions.where(outbox_partitions.c.queue == scope.queue)
        if scope.partition is not None:
            partitions = partitions.where(outbox_partitions.c.partition == scope.partition)
        conditions.append(D.partition_id.in_(partitions))
    return conditions


def _check_status(status: str | None) -> None:
    if status is not None and status not in DEAD_LETTER_STATUSES:
        raise ValueError(f"unknown dead-letter status {status!r} (one of {', '.join(DEAD_LETTER_STATUSES)})")


async def list_dead_letters(
    db: databases.Database,
    queue: str | None = None,
    status: DeadLetterStatus | None = "pending",
    limit: int = 100,
    *,
    scope: DeadLetterFilter | None = None,
) -> list[DeadLetter]:
    """Newest failures first; `status=None` lists every status."""
    _check_status(status)
    conditions = _scope(scope) + _scope(DeadLetterFilter(queue=queue))
    if status is not None:
        conditions.append(D.status == status)
    rows = await db.fetch_all(
        sa.select(*_COLUMNS)
        .select_from(outbox_dead_letters.join(outbox_partitions, outbox_partitions.c.id == D.partition_id))
        .where(*conditions)
        .order_by(D.failed_at.desc(), D.id.desc())
        .limit(max(1, limit))
    )
    return [_to_dead_letter(row) for row in rows]


async def count_dead_letters(
    db: databases.Database, queue: str | None = None, status: DeadLetterStatus | None = "pending"
) -> int:
    _check_status(status)
    conditions = _scope(DeadLetterFilter(queue=queue))
    if status is not None:
        conditions.append(D.status == status)
    value = await db.fetch_val(sa.select(sa.func.count()).select_from(outbox_dead_letters).where(*conditions))
    return int(value or 0)


async def get_dead_letter(db: databases.Database, dead_letter_id: int) -> DeadLetter | None:
    row = await db.fetch_one(
        sa.select(*_COLUMNS)
        .select_from(outbox_dead_letters.join(outbox_partitions, outbox_partitions.c.id == D.partition_id))
        .where(D.id == dead_letter_id)
    )
    return None if row is None else _to_dead_letter(row)


def _claimable(scope: DeadLetterFilter | None, now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        *_scope(scope),
        sa.or_(D.status == "pending", sa.and_(D.status == "reprocessing", D.deadline < now)),
    )


async def _claim_in_transaction(
    db: databases.Database,
    dialect: DialectName,
    scope: DeadLetterFilter | None,
    now: dt.datetime,
    deadline: dt.datetime,
    limit: int | None,
) -> list[int]:
    claimable = _claimable(scope, now)
    # Oldest claim first (never-claimed rows before expired claims), then failure order.
    candidates = sa.select(D.id).where(claimable).order_by(D.deadline.asc().nulls_first(), D.id)
    if limit is not None:
        candidates = candidates.limit(limit)
    if dialect == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    rows = await db.fetch_all(
        sa.update(outbox_dead_letters)
        .where(D.id.in_(candidates.scalar_subquery()), claimable)
        .values(status="reprocessing", deadline=deadline)
        .returning(D.id)
    )
    return sorted(int(row[0]) for row in rows)


async def claim_dead_letters(
    db: databases.Database,
    dialect: DialectName,
    scope: DeadLetterFilter | None = None,
    *,
    timeout_seconds: float = DEFAULT_CLAIM_SECONDS,
    limit: int | None = None,
    clock: Clock = utc_now,
) -> list[DeadLetter]:
    """Move pending (or expired reprocessing) rows to `reprocessing` until now + timeout; return them.

    A second claim skips them until that deadline passes. Finish with `resolve()` or `reject()`.
    """
    now = clock()
    async with db.transaction():
        ids = await _claim_in_transaction(
            db, dialect, scope, now, now + dt.timedelta(seconds=timeout_seconds), limit
        )
    return await _fetch_by_ids(db, ids)


async def _fetch_by_ids(db: databases.Database, ids: Sequence[int]) -> list[DeadLetter]:
    if not ids:
        return []
    rows = await db.fetch_all(
        sa.select(*_COLUMNS)
        .select_from(outbox_dead_letters.join(outbox_partitions, outbox_partitions.c.id == D.partition_id))
        .where(D.id.in_(list(ids)))
        .order_by(D.partition_id, D.seq, D.id)
    )
    return [_to_dead_letter(row) for row in rows]


async def resolve_dead_letters(
    db: databases.Database, ids: Sequence[int], *, clock: Clock = utc_now
) -> list[int]:
    """reprocessing → resolved (completed_at = now). Returns the ids that moved."""
    rows = await db.fetch_all(
        sa.update(outbox_dead_letters)
        .where(D.id.in_(list(ids)), D.status == "reprocessing")
        .values(status="resolved", completed_at=clock(), deadline=None)
        .returning(D.id)
    )
    return sorted(int(row[0]) for row in rows)


async def reject_dead_letters(
    db: databases.Database, ids: Sequence[int], reason: str, *, clock: Clock = utc_now
) -> list[int]:
    """reprocessing → pending again, attempts + 1, failed_at = now, last_error = reason."""
    rows = await db.fetch_all(
        sa.update(outbox_dead_letters)
        .where(D.id.in_(list(ids)), D.status == "reprocessing")
        .values(
            status="pending", attempts=D.attempts + 1, failed_at=clock(), last_error=reason, deadline=None
        )
        .returning(D.id)
    )
    return sorted(int(row[0]) for row in rows)


async def discard_dead_letters(
    db: databases.Database,
    scope: DeadLetterFilter,
    *,
    clock: Clock = utc_now,
    batch_size: int | None = None,
    progress: Progress | None = None,
    everything: bool = False,
) -> list[int]:
    """pending → discarded. Returns the ids that moved, in ascending order.

    An empty filter is refused so a typo cannot discard everything by accident, unless `everything=True`
    (`minichat outbox dead-letters discard --all`). With `batch_size`, the rows pending when the call starts
    are discarded `batch_size` at a time, each batch one statement (no long-held write lock).
    """
    if scope == DeadLetterFilter() and not everything:
        raise ValueError("discard needs ids or a filter (queue, partition, payload type)")
    if batch_size is None:
        discarded = await _discard(db, _scope(scope), clock())
        if progress is not None:
            progress(len(discarded), len(discarded))
        return discarded
    _check_batch_size(batch_size)
    rows = await db.fetch_all(sa.select(D.id).where(*_scope(scope), D.status == "pending").order_by(D.id))
    planned = [int(row[0]) for row in rows]
    if progress is not None:
        progress(0, len(planned))
    discarded = []
    for start in range(0, len(planned), batch_size):
        chunk = planned[start : start + batch_size]
        discarded += await _discard(db, [D.id.in_(chunk)], clock())
        if progress is not None:
            progress(start + len(chunk), len(planned))
    return sorted(discarded)


async def _discard(
    db: databases.Database, conditions: list[sa.ColumnElement[bool]], now: dt.datetime
) -> list[int]:
    rows = await db.fetch_all(
        sa.update(outbox_dead_letters)
        .where(*conditions, D.status == "pending")
        .values(status="discarded", completed_at=now)
        .returning(D.id)
    )
    return sorted(int(row[0]) for row in rows)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, not {batch_size}")


async def cleanup_dead_letters(db: databases.Database, scope: DeadLetterFilter | None = None) -> list[int]:
    """Delete resolved and discarded rows (they are kept until then as a record)."""
    rows = await db.fetch_all(
        sa.delete(outbox_dead_letters)
        .where(*_scope(scope), D.status.in_(["resolved", "discarded"]))
        .returning(D.id)
    )
    return sorted(int(row[0]) for row in rows)


async def replay_dead_letters(
    db: databases.Database,
    dialect: DialectName,
    scope: DeadLetterFilter,
    *,
    clock: Clock = utc_now,
    sequence: bool = True,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> list[DeadLetter]:
    """Put dead letters back at the END of their partition, in (partition, seq) order, and resolve them.

    One transaction: claim (pending or expired reprocessing), insert fresh body + incoming rows into the
    same partition, mark resolved. Afterwards the affected partitions are sequenced right away (unless
    `sequence=False`), so a running scheduler in any process finds them on its next poll. An empty filter
    replays every pending dead letter. Returns the replayed rows (as they were claimed), in (partition,
    seq) order.

    With `batch_size`, the rows claimable when the call starts are replayed in (partition, seq) order,
    `batch_size` at a time, each batch in its own transaction and sequenced after it commits: a large
    replay holds no giant transaction and reports `progress`. The replayed messages of one partition keep
    their order; a message another producer enqueues meanwhile may land between two batches. Rows claimed
    by someone else in between are skipped; dead letters created meanwhile are not replayed.
    """
    if batch_size is None:
        letters = await _replay_batch(db, dialect, scope, clock(), sequence=sequence, clock=clock)
        if progress is not None:
            progress(len(letters), len(letters))
        return letters
    _check_batch_size(batch_size)
    rows = await db.fetch_all(
        sa.select(D.id).where(_claimable(scope, clock())).order_by(D.partition_id, D.seq, D.id)
    )
    planned = [int(row[0]) for row in rows]
    if progress is not None:
        progress(0, len(planned))
    replayed: list[DeadLetter] = []
    for start in range(0, len(planned), batch_size):
        chunk = tuple(planned[start : start + batch_size])
        replayed += await _replay_batch(
            db, dialect, msgspec.structs.replace(scope, ids=chunk), clock(), sequence=sequence, clock=clock
        )
        if progress is not None:
            progress(start + len(chunk), len(planned))
    return replayed


async def _replay_batch(
    db: databases.Database,
    dialect: DialectName,
    scope: DeadLetterFilter,
    now: dt.datetime,
    *,
    sequence: bool,
    clock: Clock,
) -> list[DeadLetter]:
    deadline = now + dt.timedelta(seconds=REPLAY_CLAIM_SECONDS)
    async with db.transaction():
        ids = await _claim_in_transaction(db, dialect, scope, now, deadline, None)
        letters = await _fetch_by_ids(db, ids)
        for letter in letters:
            body_id = await db.fetch_val(
                sa.insert(outbox_body)
                .values(payload=letter.payload, payload_type=letter.payload_type, created_at=now)
                .returning(outbox_body.c.id)
            )
            await db.execute(
                sa.insert(outbox_incoming).values(partition_id=letter.partition_id, body_id=int(body_id))
            )
        if ids:
            await db.execute(
                sa.update(outbox_dead_letters)
                .where(D.id.in_(ids))
                .values(status="resolved", completed_at=now, deadline=None)
            )
    if sequence:
        for partition_id in sorted({letter.partition_id for letter in letters}):
            # Another process's sequencer may hold the partition (None): it will see these rows too.
            while await sequence_partition(db, dialect, partition_id, clock()) == SEQUENCER_BATCH:
                pass
    return letters
