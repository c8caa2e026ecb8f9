"""Vacuum: delete acknowledged outgoing rows (seq <= processed_seq) and their bodies.

Acks never delete (they stay one short transaction). Each ack bumps the partition's vacuum counter; vacuum
visits only partitions with counter > 0, deletes in chunks, and then subtracts the counter value it saw at
the start, so acks that happened meanwhile keep the partition on the list for the next round. Dead
letters hold their own copy of the payload and are never touched here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import databases
import sqlalchemy as sa

from minichat_host.outbox.tables import outbox_body, outbox_outgoing, outbox_processor, outbox_vacuum_counter

VACUUM_CHUNK = 5000
T = TypeVar("T")
WriteGuard = Callable[[Awaitable[Any]], Awaitable[Any]]


async def _unguarded(work: Awaitable[T]) -> T:
    return await work


async def vacuum(
    db: databases.Database,
    partition_ids: Sequence[int] | None = None,
    *,
    chunk: int = VACUUM_CHUNK,
    write: WriteGuard = _unguarded,
) -> int:
    """Delete acknowledged rows of `partition_ids` (all partitions when None); returns outgoing rows deleted.

    `write` wraps each write transaction (the scheduler serialises its own SQLite writes through it).
    """
    counters = sa.select(outbox_vacuum_counter.c.partition_id, outbox_vacuum_counter.c.counter).where(
        outbox_vacuum_counter.c.counter > 0
    )
    if partition_ids is not None:
        counters = counters.where(outbox_vacuum_counter.c.partition_id.in_(list(partition_ids)))
    total = 0
    for row in await db.fetch_all(counters):
        partition_id, snapshot = int(row[0]), int(row[1])
        while True:
            deleted = await write(_delete_chunk(db, partition_id, chunk))
            total += deleted
            if deleted < chunk:
                break
        await write(
            db.execute(
                sa.update(outbox_vacuum_counter)
                .where(outbox_vacuum_counter.c.partition_id == partition_id)
                .values(
                    counter=sa.case(
                        (
                            outbox_vacuum_counter.c.counter > snapshot,
                            outbox_vacuum_counter.c.counter - snapshot,
                        ),
                        else_=0,
                    )
                )
            )
        )
    return total


async def _delete_chunk(db: databases.Database, partition_id: int, chunk: int) -> int:
    processed = (
        sa.select(outbox_processor.c.processed_seq)
        .where(outbox_processor.c.partition_id == partition_id)
        .scalar_subquery()
    )
    acknowledged = (
        sa.select(outbox_outgoing.c.seq)
        .where(outbox_outgoing.c.partition_id == partition_id, outbox_outgoing.c.seq <= processed)
        .order_by(outbox_outgoing.c.seq)
        .limit(chunk)
    )
    async with db.transaction():
        rows = await db.fetch_all(
            sa.delete(outbox_outgoing)
            .where(outbox_outgoing.c.partition_id == partition_id, outbox_outgoing.c.seq.in_(acknowledged))
            .returning(outbox_outgoing.c.body_id)
        )
        body_ids = [int(row[0]) for row in rows]
        if body_ids:
            await db.execute(sa.delete(outbox_body).where(outbox_body.c.id.in_(body_ids)))
    return len(body_ids)
