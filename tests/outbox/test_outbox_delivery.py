"""Delivery outcomes, leases and shutdown (scenarios 3, 4, 5, 7 and 9 of §7)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from typing import Any

import databases
import pytest
import sqlalchemy as sa

from minichat_host.outbox import Delivery, list_dead_letters
from minichat_host.outbox.store import acquire_lease
from minichat_host.outbox.tables import outbox_processor
from minichat_host.plugins.errors import PermanentError, PluginTimeout, TransientError

from .conftest import OutboxFactory
from .helpers import QUEUE, Recorder, fast_config, wait_for


async def processor_row(database: databases.Database, partition_id: int) -> Any:
    return await database.fetch_one(
        sa.select(outbox_processor).where(outbox_processor.c.partition_id == partition_id)
    )


async def enqueue_all(outbox: Any, payloads: list[bytes], key: str = "one-key") -> int:
    await outbox.ensure_queues()
    async with outbox.transaction() as tx:
        for payload in payloads:
            result = await tx.enqueue(QUEUE, key, payload)
    return int(result.partition_id)


def numbered(n: int) -> list[bytes]:
    return [str(i).encode() for i in range(1, n + 1)]


def test_retry_backoff_doubles_up_to_the_cap_with_bounded_jitter(make_outbox: OutboxFactory) -> None:
    no_jitter = make_outbox(fast_config(retry_base_seconds=0.05, retry_max_seconds=0.4), rng=lambda: 0.0)
    assert [no_jitter._retry_delay(n) for n in range(1, 7)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.4, 0.4])
    full_jitter = make_outbox(fast_config(retry_base_seconds=0.05, retry_max_seconds=0.4), rng=lambda: 1.0)
    assert [full_jitter._retry_delay(n) for n in (1, 4)] == pytest.approx([0.0375, 0.3])


async def test_retry_acks_the_prefix_and_holds_the_partition_until_the_message_succeeds(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    recorder = Recorder(
        script={b"3": [TransientError("down"), PluginTimeout("slow"), RuntimeError("boom"), None]}
    )
    outbox = make_outbox(rng=lambda: 0.0)
    outbox.register_queue(QUEUE, recorder, partitions=1, timeout=1.0)
    partition_id = await enqueue_all(outbox, numbered(6))

    assert await outbox.run_once() == 2, "1 and 2 are acked, 3 fails"
    row = await processor_row(database, partition_id)
    assert (row.processed_seq, row.attempts, row.locked_by) == (2, 1, None)
    assert row.last_error == "down"
    assert row.retry_at is not None
    assert await outbox.run_once() == 0, "backing off: nothing is delivered before retry_at"

    await outbox.start()
    await wait_for(lambda: len(recorder.deliveries) == 6)
    calls = [(d.payload, d.attempts) for d in recorder.calls]
    assert calls == [
        (b"1", 0),
        (b"2", 0),
        (b"3", 0),
        (b"3", 1),
        (b"3", 2),
        (b"3", 3),
        (b"4", 0),
        (b"5", 0),
        (b"6", 0),
    ]
    assert recorder.seqs() == [1, 2, 3, 4, 5, 6]
    await wait_for(lambda: outbox.stats.delivered == 6)
    row = await processor_row(database, partition_id)
    assert (row.processed_seq, row.attempts, row.last_error, row.retry_at) == (6, 0, None, None)
    assert outbox.stats.retried == 3


async def test_retry_gaps_respect_the_backoff(make_outbox: OutboxFactory) -> None:
    stamps: list[float] = []

    async def failing_twice(delivery: Delivery) -> None:
        stamps.append(asyncio.get_running_loop().time())
        if len(stamps) <= 3:
            raise TransientError("not yet")

    outbox = make_outbox(fast_config(retry_base_seconds=0.1, retry_max_seconds=1.0), rng=lambda: 0.0)
    outbox.register_queue(QUEUE, failing_twice, partitions=1, timeout=1.0)
    await outbox.start()
    await enqueue_all(outbox, [b"x"])
    await wait_for(lambda: len(stamps) == 4)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    for gap, backoff in zip(gaps, [0.1, 0.2, 0.4], strict=True):
        assert gap >= backoff * 0.95, f"retried after {gap:.3f}s, backoff is {backoff}s"


async def test_reject_goes_to_dead_letters_and_the_batch_continues(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    recorder = Recorder(script={b"3": [PermanentError("invalid tenant")]})
    outbox = make_outbox()
    outbox.register_queue(QUEUE, recorder, partitions=4, timeout=1.0)
    partition_id = await enqueue_all(outbox, numbered(5))

    assert await outbox.run_once() == 5, "the reject does not stop the batch"
    assert recorder.payloads() == [b"1", b"2", b"4", b"5"]
    assert outbox.stats.retried == 0
    row = await processor_row(database, partition_id)
    assert (row.processed_seq, row.attempts, row.locked_by) == (5, 0, None)

    [letter] = await list_dead_letters(database, QUEUE)
    assert letter.payload == b"3"
    assert letter.payload_type == "application/json"
    assert letter.seq == 3
    assert letter.partition_id == partition_id
    assert letter.partition == outbox.partition_for(QUEUE, "one-key")
    assert letter.last_error == "invalid tenant"
    assert letter.attempts == 1
    assert letter.status == "pending"


async def test_undecodable_payload_is_a_reject(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    from msgspec import Struct

    class Expected(Struct):
        n: int

    async def strict(delivery: Delivery) -> None:
        delivery.decode(Expected)

    outbox = make_outbox()
    outbox.register_queue(QUEUE, strict, partitions=1, timeout=1.0)
    await enqueue_all(outbox, [b'{"n": 1}', b"not json", b'{"n": "x"}'])
    assert await outbox.run_once() == 3
    letters = await list_dead_letters(database, QUEUE)
    assert sorted(letter.seq for letter in letters) == [2, 3]
    assert all("undecodable" in letter.last_error for letter in letters)


async def test_a_hanging_hook_times_out_and_the_partition_moves_on(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    recorder = Recorder(script={b"2": [30.0]})
    outbox = make_outbox()
    outbox.register_queue(QUEUE, recorder, partitions=1, timeout=0.3)
    await outbox.start()
    partition_id = await enqueue_all(outbox, numbered(3))
    await wait_for(lambda: len(recorder.deliveries) == 3)
    assert recorder.payloads() == [b"1", b"2", b"3"]
    assert [(d.payload, d.attempts) for d in recorder.calls if d.payload == b"2"] == [(b"2", 0), (b"2", 1)]
    assert outbox.stats.retried == 1
    await wait_for(lambda: outbox.stats.delivered == 3)
    row = await processor_row(database, partition_id)
    assert row.processed_seq == 3


async def test_a_batch_never_starts_a_message_that_could_outlive_its_lease(
    make_outbox: OutboxFactory,
) -> None:
    recorder = Recorder(script={str(i).encode(): [0.15] for i in range(1, 9)})
    config = fast_config(lease_seconds=1.0, lease_headroom_seconds=0.2)
    outbox = make_outbox(config)
    outbox.register_queue(QUEUE, recorder, partitions=1, timeout=0.5, batch_size=8)
    await outbox.start()
    await enqueue_all(outbox, numbered(8))
    await wait_for(lambda: len(recorder.deliveries) == 8)
    assert recorder.seqs() == list(range(1, 9))
    assert outbox.stats.retried == 0
    assert outbox.stats.lease_lost == 0


async def test_idle_polls_never_accumulate_attempts(
    make_outbox: OutboxFactory, database: databases.Database, engine_name: str
) -> None:
    recorder = Recorder()
    outbox = make_outbox()
    outbox.register_queue(QUEUE, recorder, partitions=4, timeout=1.0)
    await outbox.start()
    await wait_for(lambda: outbox.stats.polls >= 10)
    # Even a direct lease attempt on an empty partition changes nothing.
    now = dt.datetime.now(dt.UTC)
    for partition_id in outbox._partitions:
        assert await acquire_lease(database, engine_name, partition_id, "idle-test", now, now, 10) is None  # type: ignore[arg-type]
    rows = await database.fetch_all(sa.select(outbox_processor))
    assert [(r.attempts, r.locked_by) for r in rows] == [(0, None)] * 4
    await enqueue_all(outbox, [b"first"])
    await wait_for(lambda: len(recorder.deliveries) == 1)
    assert recorder.deliveries[0].attempts == 0


async def test_lease_lost_mid_handle_rolls_back_the_ack_and_dead_letters(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    release = asyncio.Event()
    in_handler = asyncio.Event()
    seen: list[tuple[bytes, int]] = []

    async def handler(delivery: Delivery) -> None:
        seen.append((delivery.payload, delivery.attempts))
        if delivery.payload == b"1":
            raise PermanentError("rejected")
        if delivery.payload == b"2" and not release.is_set():
            in_handler.set()
            await release.wait()

    outbox = make_outbox()
    outbox.register_queue(QUEUE, handler, partitions=1, timeout=2.0)
    await outbox.start()
    partition_id = await enqueue_all(outbox, numbered(3))
    await asyncio.wait_for(in_handler.wait(), 20)
    # Another worker takes over the partition (as if our lease had expired).
    future = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    await database.execute(
        sa.update(outbox_processor)
        .where(outbox_processor.c.partition_id == partition_id)
        .values(locked_by="worker-b", locked_until=future)
    )
    release.set()
    await wait_for(lambda: outbox.stats.lease_lost == 1)
    row = await processor_row(database, partition_id)
    assert (row.processed_seq, row.locked_by) == (0, "worker-b"), "the cursor did not move"
    assert await list_dead_letters(database, QUEUE) == [], "the dead letter was rolled back with the ack"

    # Worker B goes away without acking; once its lease is free the messages come back, in order.
    await database.execute(
        sa.update(outbox_processor)
        .where(outbox_processor.c.partition_id == partition_id)
        .values(locked_by=None, locked_until=None)
    )
    await wait_for(lambda: [p for p, _ in seen].count(b"3") == 2)
    assert [p for p, _ in seen] == [b"1", b"2", b"3", b"1", b"2", b"3"]
    await wait_for(lambda: outbox.stats.delivered == 2)
    row = await processor_row(database, partition_id)
    assert row.processed_seq == 3
    assert [letter.seq for letter in await list_dead_letters(database, QUEUE)] == [1]


async def test_expired_lease_is_taken_over_by_another_outbox(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    release = asyncio.Event()
    a_started = asyncio.Event()
    a_seen: list[int] = []
    b = Recorder()

    async def slow_a(delivery: Delivery) -> None:
        a_seen.append(delivery.seq)
        a_started.set()
        await release.wait()

    worker_a = make_outbox(worker_id="worker-a")
    worker_a.register_queue(QUEUE, slow_a, partitions=1, timeout=2.0)
    await worker_a.start()
    partition_id = await enqueue_all(worker_a, numbered(4))
    await asyncio.wait_for(a_started.wait(), 20)

    # Worker B's clock is 10 s ahead: A's 3 s lease has expired for it.
    worker_b = make_outbox(
        worker_id="worker-b", clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(seconds=10)
    )
    worker_b.register_queue(QUEUE, b, partitions=1, timeout=2.0)
    assert await worker_b.run_once() == 4
    assert b.seqs() == [1, 2, 3, 4]
    assert [d.attempts for d in b.deliveries] == [1, 1, 1, 1], "B redelivers A's interrupted batch"

    # A finishes its (stale) batch; its guarded ack finds the lease gone and rolls back.
    release.set()
    await wait_for(lambda: worker_a.stats.lease_lost == 1)
    assert a_seen == [1, 2, 3, 4]
    row = await processor_row(database, partition_id)
    assert (row.processed_seq, row.attempts) == (4, 0)
    assert worker_a.stats.delivered == 0


async def test_processors_per_process_are_bounded(make_outbox: OutboxFactory) -> None:
    running = 0
    peak = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.03)
        running -= 1

    outbox = make_outbox(fast_config(max_concurrent_partitions=2))
    outbox.register_queue(QUEUE, handler, partitions=8, timeout=1.0, batch_size=2)
    await outbox.ensure_queues()
    async with outbox.transaction() as tx:
        for i in range(64):
            await tx.enqueue(QUEUE, f"key-{i}", b"x")
    await outbox.start()
    await wait_for(lambda: outbox.stats.delivered == 64)
    assert peak == 2


async def test_stop_finishes_the_message_in_flight_and_releases_the_lease(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    recorder = Recorder(script={b"1": [0.3]})
    first = make_outbox()
    first.register_queue(QUEUE, recorder, partitions=1, timeout=1.0)
    await first.start()
    partition_id = await enqueue_all(first, numbered(3))
    await wait_for(lambda: len(recorder.calls) == 1)
    await first.stop()
    assert recorder.payloads() == [b"1"], "stop lets the running hook finish and starts nothing new"
    row = await processor_row(database, partition_id)
    assert (row.processed_seq, row.attempts, row.locked_by, row.locked_until) == (1, 0, None, None)

    second = make_outbox()
    second.register_queue(QUEUE, recorder, partitions=1, timeout=1.0)
    await second.start()
    await wait_for(lambda: len(recorder.deliveries) == 3)
    assert [(d.payload, d.attempts) for d in recorder.deliveries] == [(b"1", 0), (b"2", 0), (b"3", 0)]


async def test_stop_after_the_grace_period_releases_without_counting_a_failure(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    recorder = Recorder(script={b"2": [5.0]})
    outbox = make_outbox()
    outbox.register_queue(QUEUE, recorder, partitions=1, timeout=2.0)
    await outbox.start()
    partition_id = await enqueue_all(outbox, numbered(2))
    await wait_for(lambda: len(recorder.calls) == 2)
    await outbox.stop(grace_seconds=0.1)
    row = await processor_row(database, partition_id)
    assert (row.processed_seq, row.attempts, row.locked_by) == (1, 0, None)


async def test_commits_within_the_linger_are_sequenced_and_delivered_together(
    make_outbox: OutboxFactory,
) -> None:
    """`sequencer_linger_seconds`: a commit that wakes the sequencer after a quiet spell makes it wait that
    long, so the commits of that moment take one sequencing pass and one lease round per partition (at ten
    concurrent streams, whose ends come together, the outbox's loop time per turn fell by 60%)."""
    recorder = Recorder()
    outbox = make_outbox(fast_config(sequencer_linger_seconds=0.5))
    outbox.register_queue(QUEUE, recorder, partitions=1, timeout=1.0)
    await outbox.start()
    await wait_for(lambda: outbox.stats.polls >= 1)
    wakeups = outbox.stats.sequencer_wakeups
    for n in range(5):
        async with outbox.transaction() as tx:
            await tx.enqueue(QUEUE, "one-key", str(n).encode())
        await asyncio.sleep(0.01)
    assert recorder.deliveries == [], "nothing before the linger is over"
    await wait_for(lambda: len(recorder.deliveries) == 5)
    assert outbox.stats.sequencer_wakeups == wakeups + 1
    assert outbox.stats.sequencer_lingers == 1
    assert recorder.payloads() == [b"0", b"1", b"2", b"3", b"4"]
    assert recorder.seqs() == [1, 2, 3, 4, 5]

    # Woken again within the linger of its last pass (a steady stream of commits): it goes on at once.
    async with outbox.transaction() as tx:
        await tx.enqueue(QUEUE, "one-key", b"5")
    await wait_for(lambda: len(recorder.deliveries) == 6)
    assert outbox.stats.sequencer_lingers == 1


async def test_stopping_during_the_linger_loses_nothing(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    recorder = Recorder()
    outbox = make_outbox(fast_config(sequencer_linger_seconds=5.0))
    outbox.register_queue(QUEUE, recorder, partitions=1, timeout=1.0)
    await outbox.start()
    async with outbox.transaction() as tx:
        await tx.enqueue(QUEUE, "one-key", b"kept")
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await outbox.stop()
    assert time.monotonic() - started < 2.0, "stop() does not wait out the linger"
    assert recorder.deliveries == []

    again = make_outbox(fast_config(sequencer_linger_seconds=0.0))
    again.register_queue(QUEUE, recorder, partitions=1, timeout=1.0)
    await again.start()  # the reconciler finds the committed row that was never sequenced
    await wait_for(lambda: recorder.payloads() == [b"kept"])
