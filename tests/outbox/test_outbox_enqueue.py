"""Enqueue in the caller's transaction, wake-ups after commit, sequencing (scenarios 1, 2 and 10 of §7)."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import uuid

import databases
import msgspec
import pytest
import sqlalchemy as sa

from minichat_host.outbox import (
    InvalidPartitionCount,
    InvalidQueueName,
    InvalidQueueTimeout,
    Outbox,
    PartitionCountMismatch,
    PayloadTooLarge,
    QueueNotRegistered,
    enqueue,
    key_hash,
    partition_for,
)
from minichat_host.outbox.store import sequence_partition, sequence_partitions_sqlite
from minichat_host.outbox.tables import outbox_body, outbox_incoming, outbox_outgoing

from .conftest import OutboxFactory
from .helpers import QUEUE, Recorder, fast_config, wait_for


class Note(msgspec.Struct):
    text: str
    n: int


async def count_rows(database: databases.Database, table: sa.Table) -> int:
    return int(await database.fetch_val(sa.select(sa.func.count()).select_from(table)))


async def _registered_without_scheduler(make_outbox: OutboxFactory) -> Outbox:
    """An outbox with QUEUE (4 partitions) in the database and no scheduler: nothing sequences or delivers
    unless the test does."""
    outbox = make_outbox(fast_config(reconcile_interval_seconds=3600.0, poll_interval_seconds=3600.0))
    outbox.register_queue(QUEUE, Recorder(), partitions=4, timeout=1.0)
    await outbox.ensure_queues()
    return outbox


def test_partition_hash_is_stable_and_documented() -> None:
    key = uuid.UUID("00000000-df51-5b42-9538-d2b56b7ee953")
    assert partition_for(key, 4) == key.int % 4
    # A UUID given as a string lands where the UUID does (tenant ids travel as both).
    assert partition_for(str(key), 8) == partition_for(key, 8)
    # Other strings: blake2b, stable across processes and Python's hash seed.
    assert key_hash("chat-a") == key_hash("chat-a")
    assert partition_for("chat-a", 64) == key_hash("chat-a") % 64
    assert partition_for(13, 4) == 1
    with pytest.raises(InvalidPartitionCount):
        partition_for(key, 3)


def test_register_queue_validation(make_outbox: OutboxFactory) -> None:
    outbox = make_outbox(fast_config(lease_seconds=3.0, lease_headroom_seconds=0.5))
    handler = Recorder()
    with pytest.raises(InvalidQueueTimeout, match=r"below the lease budget 2\.5s"):
        outbox.register_queue(QUEUE, handler, partitions=4, timeout=2.5)
    with pytest.raises(InvalidQueueName):
        outbox.register_queue("-bad", handler, partitions=4, timeout=1.0)
    with pytest.raises(InvalidPartitionCount):
        outbox.register_queue(QUEUE, handler, partitions=6, timeout=1.0)
    # A longer lease for one queue makes room for a longer timeout (the audit queue needs this).
    spec = outbox.register_queue(QUEUE, handler, partitions=4, timeout=2.5, lease_seconds=6.0)
    assert spec.lease_seconds == 6.0


async def test_rollback_leaves_nothing_and_commit_is_delivered_once(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    recorder = Recorder()
    outbox = make_outbox()
    outbox.register_queue(QUEUE, recorder, partitions=4, timeout=1.0)
    await outbox.start()
    await wait_for(lambda: outbox.stats.polls >= 1)
    wakeups = outbox.stats.sequencer_wakeups

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with outbox.transaction() as tx:
            await tx.enqueue(QUEUE, uuid.uuid4(), Note(text="rolled back", n=1))
            raise Boom
    assert await count_rows(database, outbox_body) == 0
    assert await count_rows(database, outbox_incoming) == 0
    await asyncio.sleep(0.1)
    assert outbox.stats.sequencer_wakeups == wakeups, "a rollback must not wake the sequencer"

    async with outbox.transaction() as tx:
        await tx.enqueue(QUEUE, uuid.uuid4(), Note(text="committed", n=2))
    await wait_for(lambda: len(recorder.deliveries) == 1)
    # Several polls and reconciles later it is still delivered exactly once.
    polls = outbox.stats.polls
    await wait_for(lambda: outbox.stats.polls >= polls + 5)
    assert [d.decode(Note) for d in recorder.deliveries] == [Note(text="committed", n=2)]
    assert recorder.deliveries[0].attempts == 0
    assert recorder.deliveries[0].payload_type == "application/json"


async def test_contiguous_seqs_in_order_across_batches_and_concurrent_producers(
    make_outbox: OutboxFactory,
) -> None:
    recorder = Recorder()
    outbox = make_outbox()
    outbox.register_queue(QUEUE, recorder, partitions=4, timeout=1.0, batch_size=7)
    await outbox.start()
    key = uuid.uuid4()
    partition = outbox.partition_for(QUEUE, key)

    async def producer(name: str) -> None:
        for txn in range(6):
            async with outbox.transaction() as tx:
                for i in range(5):
                    await tx.enqueue(QUEUE, key, f"{name}:{txn}:{i}".encode())
            await asyncio.sleep(0)

    await asyncio.gather(*(asyncio.create_task(producer(n)) for n in "abcd"))
    await wait_for(lambda: len(recorder.deliveries) == 120)
    assert {d.partition for d in recorder.deliveries} == {partition}
    assert recorder.seqs() == list(range(1, 121)), "contiguous seqs, delivered in seq order"
    for name in "abcd":
        mine = [d.payload.decode() for d in recorder.deliveries if d.payload.startswith(name.encode())]
        expected = [f"{name}:{t}:{i}" for t in range(6) for i in range(5)]
        assert mine == expected, "each producer's messages arrive in the order it committed them"


async def test_wakeups_coalesce_and_reconciler_finds_unnotified_rows(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    recorder = Recorder()
    # No linger: the rows committed below must be left to the reconciler, not swept up by the sequencer's
    # pass for the notifications.
    outbox = make_outbox(fast_config(reconcile_interval_seconds=0.3, sequencer_linger_seconds=0.0))
    outbox.register_queue(QUEUE, recorder, partitions=2, timeout=1.0)
    await outbox.start()
    await wait_for(lambda: outbox.stats.reconciles >= 1)
    before = outbox.stats.sequencer_wakeups
    # A burst of notifications before the sequencer gets to run: one wake-up.
    for _ in range(50):
        outbox.notify(QUEUE)
    await asyncio.sleep(0.05)
    assert outbox.stats.sequencer_wakeups == before + 1

    # Rows committed without any wake-up (another process, or a caller that forgot notify()).
    async with database.transaction():
        for i in range(3):
            await enqueue(database, QUEUE, f"key-{i}", {"i": i})
    await wait_for(lambda: len(recorder.deliveries) == 3, within=10)
    assert outbox.stats.reconciles >= 2


async def test_low_level_enqueue_and_notify(make_outbox: OutboxFactory, database: databases.Database) -> None:
    recorder = Recorder()
    outbox = make_outbox(fast_config(reconcile_interval_seconds=3600.0, poll_interval_seconds=3600.0))
    outbox.register_queue(QUEUE, recorder, partitions=4, timeout=1.0)
    await outbox.start()
    key = uuid.uuid4()
    async with database.transaction():
        result = await enqueue(database, QUEUE, key, Note(text="x", n=1))
    assert result.partition == key.int % 4
    assert result.queue == QUEUE
    outbox.notify(result.queue, result.partition)
    await wait_for(lambda: len(recorder.deliveries) == 1, within=5)


async def test_known_partitions_route_as_the_database_lookup_does(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    """`tx.enqueue` on a queue registered here skips the partition lookup; the rows land where it would."""
    outbox = await _registered_without_scheduler(make_outbox)
    keys = [uuid.uuid4() for _ in range(16)] + ["tenant-a", "tenant-b", 7]
    async with outbox.transaction() as tx:
        known = [await tx.enqueue(QUEUE, key, b"x") for key in keys]
    async with database.transaction():
        looked_up = [await enqueue(database, QUEUE, key, b"x") for key in keys]
    assert known == looked_up
    assert len({entry.partition for entry in known}) > 1
    rows = await database.fetch_all(
        sa.select(outbox_incoming.c.partition_id).order_by(outbox_incoming.c.body_id)
    )
    assert [row[0] for row in rows] == [entry.partition_id for entry in known + looked_up]


async def test_each_incoming_row_points_at_its_own_body(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    """Several enqueues in one transaction, through both ways in: every incoming row joins the body that
    carries its payload (on SQLite the incoming row takes the id of the body inserted just before it)."""
    outbox = await _registered_without_scheduler(make_outbox)
    sent: list[tuple[int, bytes]] = []
    async with outbox.transaction() as tx:
        for n in range(6):
            payload = f"tx-{n}".encode()
            entry = await tx.enqueue(QUEUE, f"key-{n}", payload, payload_type="application/octet-stream")
            sent.append((entry.partition_id, payload))
        entry = await enqueue(
            database, QUEUE, "key-low", b"low-level", payload_type="application/octet-stream"
        )
        sent.append((entry.partition_id, b"low-level"))
    rows = await database.fetch_all(
        sa.select(outbox_incoming.c.partition_id, outbox_body.c.payload)
        .select_from(outbox_incoming.join(outbox_body, outbox_incoming.c.body_id == outbox_body.c.id))
        .order_by(outbox_incoming.c.id)
    )
    assert [(row[0], bytes(row[1])) for row in rows] == sent
    assert await count_rows(database, outbox_body) == len(sent)


async def test_nested_transactions_wake_after_the_outer_commit(make_outbox: OutboxFactory) -> None:
    recorder = Recorder()
    outbox = make_outbox(fast_config(reconcile_interval_seconds=3600.0, poll_interval_seconds=3600.0))
    outbox.register_queue(QUEUE, recorder, partitions=1, timeout=1.0)
    await outbox.start()
    async with outbox.transaction() as outer:
        await outer.enqueue(QUEUE, "k", b"1")
        async with outbox.transaction() as inner:
            await inner.enqueue(QUEUE, "k", b"2")
        assert inner is outer
    await wait_for(lambda: recorder.payloads() == [b"1", b"2"], within=5)


async def test_payload_limit_and_unregistered_queue(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    outbox = make_outbox(fast_config(max_payload_bytes=100))
    outbox.register_queue(QUEUE, Recorder(), partitions=2, timeout=1.0)
    await outbox.ensure_queues()
    with pytest.raises(
        PayloadTooLarge, match=r"payload of 101 bytes .* limit of 100 bytes \(outbox.max_payload_bytes\)"
    ):
        async with outbox.transaction() as tx:
            await tx.enqueue(QUEUE, "k", b"x" * 101)
    with pytest.raises(QueueNotRegistered):
        async with outbox.transaction() as tx:
            await tx.enqueue("no.such.queue", "k", b"x")
    assert await count_rows(database, outbox_body) == 0
    assert await count_rows(database, outbox_outgoing) == 0


async def test_partition_count_mismatch_is_refused(make_outbox: OutboxFactory) -> None:
    first = make_outbox()
    first.register_queue(QUEUE, Recorder(), partitions=4, timeout=1.0)
    await first.ensure_queues()
    second = make_outbox()
    second.register_queue(QUEUE, Recorder(), partitions=8, timeout=1.0)
    with pytest.raises(PartitionCountMismatch, match="has 4 partitions in the database"):
        await second.ensure_queues()


async def _outgoing(database: databases.Database, partition_id: int) -> list[tuple[int, bytes]]:
    rows = await database.fetch_all(
        sa.select(outbox_outgoing.c.seq, outbox_body.c.payload)
        .select_from(outbox_outgoing.join(outbox_body, outbox_outgoing.c.body_id == outbox_body.c.id))
        .where(outbox_outgoing.c.partition_id == partition_id)
        .order_by(outbox_outgoing.c.seq)
    )
    return [(int(row[0]), bytes(row[1])) for row in rows]


@pytest.mark.parametrize("engine_name", ["postgresql"], indirect=True)
async def test_a_partition_another_sequencer_holds_is_left_to_it(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    outbox = await _registered_without_scheduler(make_outbox)
    async with outbox.transaction() as tx:
        for n in range(5):
            entry = await tx.enqueue(QUEUE, "key", f"m{n}".encode(), payload_type="application/octet-stream")
    partition_id = entry.partition_id
    held, release = asyncio.Event(), asyncio.Event()

    async def other_replica() -> None:
        # Another replica's sequencer: the partition's row locked in a transaction of its own.
        async with database.transaction():
            lock = sa.text("SELECT id FROM outbox_partitions WHERE id = :id FOR UPDATE")
            await database.execute(lock.bindparams(id=partition_id))
            held.set()
            await release.wait()

    holder = asyncio.create_task(other_replica())
    await held.wait()
    now = dt.datetime.now(dt.UTC)
    assert await sequence_partition(database, "postgresql", partition_id, now) is None
    assert await count_rows(database, outbox_outgoing) == 0
    assert await count_rows(database, outbox_incoming) == 5
    release.set()
    await holder
    assert await sequence_partition(database, "postgresql", partition_id, now) == 5
    assert await _outgoing(database, partition_id) == [(n + 1, f"m{n}".encode()) for n in range(5)]
    assert await sequence_partition(database, "postgresql", partition_id, now) == 0


async def test_concurrent_sequencers_move_each_row_once_with_contiguous_seqs(
    make_outbox: OutboxFactory, database: databases.Database, engine_name: str
) -> None:
    """Several sequencers (replicas) race each other and the producers on one partition, in small batches:
    every committed row gets exactly one seq, the seqs have no gap, each producer's rows keep their order.
    On PostgreSQL most of the sequencers' calls find the partition held by another (SKIP LOCKED)."""
    outbox = await _registered_without_scheduler(make_outbox)
    partition_id: int | None = None
    producing = True

    async def producer(name: str) -> None:
        for txn in range(25):
            async with outbox.transaction() as tx:
                for i in range(2):
                    entry = await tx.enqueue(
                        QUEUE, "key", f"{name}:{txn}:{i}".encode(), payload_type="application/octet-stream"
                    )
            nonlocal partition_id
            partition_id = entry.partition_id
            await asyncio.sleep(0)

    async def sequencer() -> None:
        while producing or await count_rows(database, outbox_incoming):
            if partition_id is not None:
                now = dt.datetime.now(dt.UTC)
                await sequence_partition(database, engine_name, partition_id, now, batch=3)
            await asyncio.sleep(0)

    sequencers = [asyncio.create_task(sequencer()) for _ in range(4)]
    await asyncio.gather(*(producer(name) for name in "ab"))
    producing = False
    await asyncio.gather(*sequencers)

    assert partition_id is not None
    moved = await _outgoing(database, partition_id)
    assert [seq for seq, _ in moved] == list(range(1, 101))
    payloads = [payload.decode() for _, payload in moved]
    assert len(set(payloads)) == 100
    for name in "ab":
        mine = [p for p in payloads if p.startswith(f"{name}:")]
        assert mine == [f"{name}:{t}:{i}" for t in range(25) for i in range(2)]


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
async def test_sqlite_sequences_several_partitions_in_one_transaction(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    """The SQLite sequencer's one transaction per wake-up: each partition's rows get their own contiguous
    seqs in enqueue order, up to the batch; what is left stays incoming for the next call; a failure
    part-way leaves every partition as it was."""
    outbox = await _registered_without_scheduler(make_outbox)
    by_partition: dict[int, list[str]] = {}
    for index in range(40):
        async with outbox.transaction() as tx:
            entry = await tx.enqueue(
                QUEUE, f"key-{index % 7}", f"m{index}".encode(), payload_type="text/plain"
            )
        by_partition.setdefault(entry.partition_id, []).append(f"m{index}")
    assert len(by_partition) >= 2
    ids = sorted(by_partition)
    now = dt.datetime.now(dt.UTC)

    with pytest.raises(sqlite3.IntegrityError):
        async with database.transaction():  # joins: the sequencing and the failure roll back together
            await sequence_partitions_sqlite(database, ids, now, batch=3)
            await database.execute(outbox_body.insert().values(id=1, payload=b"", payload_type="x"))
    assert await count_rows(database, outbox_outgoing) == 0

    assert await sequence_partitions_sqlite(database, ids, now, batch=3) == {
        partition_id: min(3, len(by_partition[partition_id])) for partition_id in ids
    }
    while await count_rows(database, outbox_incoming):
        await sequence_partitions_sqlite(database, ids, now, batch=3)
    for partition_id in ids:
        moved = await _outgoing(database, partition_id)
        assert [seq for seq, _ in moved] == list(range(1, len(by_partition[partition_id]) + 1))
        assert [payload.decode() for _, payload in moved] == by_partition[partition_id]
