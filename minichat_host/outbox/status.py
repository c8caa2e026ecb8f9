"""`status()`: per queue and partition backlog, cursor, lease, attempts, last error, oldest age, dead letters.

A plain async function over `databases.Database`, so the CLI and the admin API can call it from any
process (it only reads).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence

import databases
import sqlalchemy as sa

from minichat_host.outbox.enqueue import Clock, utc_now
from minichat_host.outbox.models import QueueStatus
from minichat_host.outbox.tables import (
    outbox_body,
    outbox_dead_letters,
    outbox_incoming,
    outbox_outgoing,
    outbox_partitions,
    outbox_processor,
)


async def queue_status(
    db: databases.Database, queues: Sequence[str] | None = None, *, clock: Clock = utc_now
) -> list[QueueStatus]:
    """One QueueStatus per partition of `queues` (all queues in the database when None)."""
    parts = outbox_partitions.c
    proc = outbox_processor.c
    main = (
        sa.select(
            parts.id,
            parts.queue,
            parts.partition,
            parts.sequence,
            proc.processed_seq,
            proc.attempts,
            proc.last_error,
            proc.locked_by,
            proc.locked_until,
            proc.retry_at,
        )
        .select_from(outbox_partitions.join(outbox_processor, proc.partition_id == parts.id))
        .order_by(parts.queue, parts.partition)
    )
    if queues is not None:
        main = main.where(parts.queue.in_(list(queues)))
    rows = await db.fetch_all(main)
    if not rows:
        return []
    ids = [int(row[0]) for row in rows]
    # Committed but not yet sequenced: count and oldest enqueue time.
    await _let_others_run()
    incoming_rows = await db.fetch_all(
        sa.select(outbox_incoming.c.partition_id, sa.func.count(), sa.func.min(outbox_body.c.created_at))
        .select_from(outbox_incoming.join(outbox_body, outbox_body.c.id == outbox_incoming.c.body_id))
        .where(outbox_incoming.c.partition_id.in_(ids))
        .group_by(outbox_incoming.c.partition_id)
    )
    # The head (processed_seq + 1) is the oldest sequenced message still waiting.
    await _let_others_run()
    head_rows = await db.fetch_all(
        sa.select(outbox_outgoing.c.partition_id, outbox_body.c.created_at)
        .select_from(
            outbox_outgoing.join(outbox_body, outbox_body.c.id == outbox_outgoing.c.body_id).join(
                outbox_processor,
                sa.and_(
                    proc.partition_id == outbox_outgoing.c.partition_id,
                    outbox_outgoing.c.seq == proc.processed_seq + 1,
                ),
            )
        )
        .where(outbox_outgoing.c.partition_id.in_(ids))
    )
    await _let_others_run()
    dead_rows = await db.fetch_all(
        sa.select(outbox_dead_letters.c.partition_id, sa.func.count())
        .where(outbox_dead_letters.c.partition_id.in_(ids), outbox_dead_letters.c.status == "pending")
        .group_by(outbox_dead_letters.c.partition_id)
    )
    unsequenced = {int(row[0]): int(row[1]) for row in incoming_rows}
    oldest: dict[int, dt.datetime] = {}
    for row in incoming_rows:
        oldest[int(row[0])] = _as_utc(row[2])
    for row in head_rows:
        created = _as_utc(row[1])
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
                locked_until=row[8],
                retry_at=row[9],
                oldest_pending_age_seconds=None if age is None else max(age, 0.0),
                dead_letters=dead.get(pid, 0),
            )
        )
    return result


async def _let_others_run() -> None:
    # Each of these statements is compiled per call (~0.5 ms); the metrics refresh runs them in the
    # server every few seconds, so yield between them rather than hold the loop for the lot.
    await asyncio.sleep(0)


def _as_utc(value: dt.datetime | str) -> dt.datetime:
    """`min()` over a UtcDateTime column comes back untyped (text on SQLite): normalise it."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)
