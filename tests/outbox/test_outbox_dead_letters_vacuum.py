"""Dead-letter lifecycle and replay, vacuum, status and metrics (scenarios 11 and 12 of §7)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import databases
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from minichat_host.outbox import (
    DeadLetter,
    DeadLetterFilter,
    OutboxMetrics,
    claim_dead_letters,
    cleanup_dead_letters,
    discard_dead_letters,
    get_dead_letter,
    list_dead_letters,
    queue_status,
    reject_dead_letters,
    resolve_dead_letters,
)
from minichat_host.outbox.store import acquire_lease, sequence_partition
from minichat_host.outbox.tables import (
    outbox_body,
    outbox_incoming,
    outbox_outgoing,
    outbox_vacuum_counter,
)
from minichat_host.plugins.errors import PermanentError, TransientError

from .conftest import OutboxFactory
from .helpers import QUEUE, Recorder, fast_config, wait_for


async def rejected(
    make_outbox: OutboxFactory, payloads: list[bytes], reject: set[bytes], key: str = "k"
) -> Recorder:
    recorder = Recorder(script={p: [PermanentError(f"bad {p.decode()}")] for p in reject})
    outbox = make_outbox()
    outbox.register_queue(QUEUE, recorder, partitions=2, timeout=1.0)
    await outbox.ensure_queues()
    async with outbox.transaction() as tx:
        for payload in payloads:
            await tx.enqueue(QUEUE, key, payload)
    await outbox.run_once()
    return recorder


async def test_claim_resolve_reject_discard_cleanup(
    make_outbox: OutboxFactory, database: databases.Database, engine_name: str
) -> None:
    await rejected(make_outbox, [b"a", b"b", b"c", b"d"], {b"a", b"b", b"c", b"d"})
    letters = await list_dead_letters(database, QUEUE)
    assert len(letters) == 4
    ids = sorted(letter.id for letter in letters)

    now = dt.datetime.now(dt.UTC)
    dialect: Any = engine_name

    async def claim(subset: list[int], at: dt.datetime) -> list[DeadLetter]:
        scope = DeadLetterFilter(ids=tuple(subset))
        return await claim_dead_letters(database, dialect, scope, timeout_seconds=60, clock=lambda: at)

    claimed = await claim(ids[:2], now)
    assert [c.id for c in claimed] == ids[:2]
    assert {c.status for c in claimed} == {"reprocessing"}
    assert claimed[0].deadline == now + dt.timedelta(seconds=60)
    # A second claim skips them until the deadline passes.
    assert [c.id for c in await claim(ids, now)] == ids[2:]
    assert [c.id for c in await claim(ids[:2], now + dt.timedelta(seconds=61))] == ids[:2]

    assert await resolve_dead_letters(database, [ids[0]]) == [ids[0]]
    assert await reject_dead_letters(database, [ids[1], ids[0]], "still bad") == [ids[1]], (
        "only from reprocessing"
    )
    second = await get_dead_letter(database, ids[1])
    assert second is not None
    assert (second.status, second.attempts, second.last_error) == ("pending", 2, "still bad")
    resolved = await get_dead_letter(database, ids[0])
    assert resolved is not None and resolved.status == "resolved" and resolved.completed_at is not None

    assert await discard_dead_letters(database, DeadLetterFilter(ids=(ids[1], ids[2]))) == [ids[1]]
    with pytest.raises(ValueError, match="needs ids or a filter"):
        await discard_dead_letters(database, DeadLetterFilter())
    assert await cleanup_dead_letters(database) == [ids[0], ids[1]]
    remaining = await list_dead_letters(database, QUEUE, status=None)
    assert sorted((x.id, x.status) for x in remaining) == [(ids[2], "reprocessing"), (ids[3], "reprocessing")]


async def test_replay_puts_messages_back_at_the_end_of_their_partition_in_order(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    first_pass = await rejected(make_outbox, [b"1", b"2", b"3", b"4"], {b"2", b"3"})
    assert first_pass.payloads() == [b"1", b"4"]
    recorder = Recorder()
    outbox = make_outbox()
    outbox.register_queue(QUEUE, recorder, partitions=2, timeout=1.0)
    await outbox.start()
    async with outbox.transaction() as tx:
        await tx.enqueue(QUEUE, "k", b"5")
    await wait_for(lambda: recorder.payloads() == [b"5"])

    pending = await outbox.dead_letters.list(QUEUE)
    replayed = await outbox.dead_letters.replay([letter.id for letter in pending])
    assert [r.seq for r in replayed] == [2, 3]
    await wait_for(lambda: len(recorder.deliveries) == 3)
    assert recorder.payloads() == [b"5", b"2", b"3"], "replayed after everything already queued, in order"
    assert recorder.seqs() == [5, 6, 7]
    assert await outbox.dead_letters.list(QUEUE) == []
    assert {x.status for x in await outbox.dead_letters.list(QUEUE, status=None)} == {"resolved"}
    assert await outbox.dead_letters.replay([replayed[0].id]) == [], "a resolved letter is not replayed twice"


async def test_replay_without_a_running_scheduler_is_picked_up_by_polling(
    make_outbox: OutboxFactory, database: databases.Database, engine_name: str
) -> None:
    from minichat_host.outbox import replay_dead_letters

    await rejected(make_outbox, [b"x"], {b"x"})
    recorder = Recorder()
    outbox = make_outbox(fast_config(reconcile_interval_seconds=3600.0))
    outbox.register_queue(QUEUE, recorder, partitions=2, timeout=1.0)
    await outbox.start()
    # As the CLI does from another process: replay + sequence, no notification to this scheduler.
    replayed = await replay_dead_letters(database, engine_name, DeadLetterFilter(queue=QUEUE))  # type: ignore[arg-type]
    assert len(replayed) == 1
    await wait_for(lambda: recorder.payloads() == [b"x"])


async def test_vacuum_deletes_only_acknowledged_rows_and_keeps_dead_letters(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    recorder = Recorder(script={b"2": [PermanentError("bad")], b"5": [TransientError("later")] * 50})
    outbox = make_outbox(fast_config(retry_base_seconds=30.0, retry_max_seconds=30.0))
    outbox.register_queue(QUEUE, recorder, partitions=1, timeout=1.0)
    await outbox.ensure_queues()
    async with outbox.transaction() as tx:
        for i in range(1, 8):
            await tx.enqueue(QUEUE, "k", str(i).encode())
    await outbox.run_once()
    assert recorder.payloads() == [b"1", b"3", b"4"], "5 is backing off, 6 and 7 wait behind it"
    counter = await database.fetch_val(sa.select(outbox_vacuum_counter.c.counter))
    assert counter >= 1

    # A message committed but not yet sequenced is not touched either.
    async with database.transaction():
        from minichat_host.outbox import enqueue

        await enqueue(database, QUEUE, "k", b"8")
    deleted = await outbox.vacuum()
    assert deleted == 4
    seqs = [
        r[0]
        for r in await database.fetch_all(sa.select(outbox_outgoing.c.seq).order_by(outbox_outgoing.c.seq))
    ]
    assert seqs == [5, 6, 7]
    assert await database.fetch_val(sa.select(sa.func.count()).select_from(outbox_body)) == 4
    assert await database.fetch_val(sa.select(sa.func.count()).select_from(outbox_incoming)) == 1
    assert await database.fetch_val(sa.select(outbox_vacuum_counter.c.counter)) == 0
    [letter] = await list_dead_letters(database, QUEUE)
    assert letter.payload == b"2", "dead letters keep their own copy of the payload"
    assert await outbox.vacuum() == 0, "nothing acknowledged since"


async def test_vacuum_keeps_counter_bumps_that_happen_meanwhile(
    make_outbox: OutboxFactory, database: databases.Database
) -> None:
    outbox = make_outbox()
    outbox.register_queue(QUEUE, Recorder(), partitions=1, timeout=1.0)
    await outbox.ensure_queues()
    async with outbox.transaction() as tx:
        await tx.enqueue(QUEUE, "k", b"1")
    await outbox.run_once()
    [partition_id] = outbox._partitions
    from minichat_host.outbox import vacuum as vacuum_fn

    bumped = False

    async def bump_during_vacuum(work: object) -> object:
        nonlocal bumped
        result = await work  # type: ignore[misc]
        if not bumped:
            bumped = True  # an ack lands between the delete and the counter update
            await database.execute(
                sa.update(outbox_vacuum_counter).values(counter=outbox_vacuum_counter.c.counter + 1)
            )
        return result

    assert await vacuum_fn(database, [partition_id], write=bump_during_vacuum) == 1
    assert await database.fetch_val(sa.select(outbox_vacuum_counter.c.counter)) == 1


async def test_status_counts_unsequenced_rows_and_reports_a_held_lease(
    make_outbox: OutboxFactory, database: databases.Database, engine_name: str
) -> None:
    outbox = make_outbox()
    outbox.register_queue(QUEUE, Recorder(), partitions=1, timeout=1.0)
    outbox.register_queue("other", Recorder(), partitions=1, timeout=1.0)
    await outbox.ensure_queues()
    before = dt.datetime.now(dt.UTC)
    async with outbox.transaction() as tx:
        for n in range(3):
            await tx.enqueue(QUEUE, "k", {"n": n})

    # Committed, not yet sequenced: counted, and aged from the oldest enqueue.
    [waiting] = await queue_status(database, [QUEUE])
    assert (waiting.last_seq, waiting.unsequenced, waiting.backlog) == (0, 3, 3)
    assert waiting.oldest_pending_age_seconds is not None and waiting.oldest_pending_age_seconds >= 0

    # Sequenced and leased by a worker that has not acked: the lease shows, as aware UTC datetimes.
    [partition_id] = [s.partition_id for s in await queue_status(database, [QUEUE])]
    now = dt.datetime.now(dt.UTC)
    assert await sequence_partition(database, engine_name, partition_id, now) == 3
    lease_until = now + dt.timedelta(seconds=30)
    lease = await acquire_lease(database, engine_name, partition_id, "worker-1", now, lease_until, 10)
    assert lease is not None
    [leased] = await queue_status(database, [QUEUE])
    assert (leased.last_seq, leased.processed_seq, leased.unsequenced, leased.backlog) == (3, 0, 0, 3)
    assert (leased.locked_by, leased.attempts, leased.retry_at) == ("worker-1", 1, None)
    assert leased.locked_until is not None and leased.locked_until.tzinfo is not None
    assert abs((leased.locked_until - lease_until).total_seconds()) < 0.001
    age = leased.oldest_pending_age_seconds
    assert age is not None and 0 <= age <= (dt.datetime.now(dt.UTC) - before).total_seconds() + 1

    # The queue filter: every partition of the named queues, in queue order; none for no queues.
    assert [s.queue for s in await queue_status(database, ["other", QUEUE])] == sorted(["other", QUEUE])
    assert [s.queue for s in await queue_status(database)] == sorted(["other", QUEUE])
    assert await queue_status(database, []) == []
    assert await queue_status(database, ["missing"]) == []


async def test_status_and_metrics(make_outbox: OutboxFactory, database: databases.Database) -> None:
    recorder = Recorder(script={b"bad": [PermanentError("no")], b"slow": [TransientError("wait")] * 100})
    registry = CollectorRegistry()
    outbox = make_outbox(
        fast_config(retry_base_seconds=30.0, retry_max_seconds=30.0), metrics=OutboxMetrics(registry)
    )
    outbox.register_queue(QUEUE, recorder, partitions=2, timeout=1.0)
    await outbox.ensure_queues()
    async with outbox.transaction() as tx:
        for payload in (b"ok", b"bad", b"slow", b"after"):
            await tx.enqueue(QUEUE, "k", payload)
    await outbox.run_once()
    await outbox.refresh_metrics()

    statuses = await queue_status(database)
    assert [(s.queue, s.partition) for s in statuses] == [(QUEUE, 0), (QUEUE, 1)]
    busy = next(s for s in statuses if s.last_seq)
    assert (busy.last_seq, busy.processed_seq, busy.backlog, busy.attempts) == (4, 2, 2, 1)
    assert busy.last_error == "wait"
    assert busy.retry_at is not None and busy.retry_at.tzinfo is not None and busy.locked_by is None
    assert busy.dead_letters == 1
    assert busy.oldest_pending_age_seconds is not None and busy.oldest_pending_age_seconds >= 0
    idle = next(s for s in statuses if not s.last_seq)
    assert (idle.backlog, idle.oldest_pending_age_seconds, idle.dead_letters) == (0, None, 0)

    def sample(name: str, **labels: str) -> float | None:
        value: float | None = registry.get_sample_value(name, {"queue": QUEUE, **labels})
        return value

    assert sample("minichat_outbox_enqueued_total") == 4
    assert sample("minichat_outbox_delivered_total") == 1
    assert sample("minichat_outbox_dead_lettered_total") == 1
    assert sample("minichat_outbox_retried_total") == 1
    assert sample("minichat_outbox_backlog") == 2
    assert sample("minichat_outbox_dead_letters_pending") == 1
    assert (sample("minichat_outbox_oldest_pending_age_seconds") or 0) >= 0
    assert sample("minichat_outbox_hook_duration_seconds_count", outcome="ok") == 1
    assert sample("minichat_outbox_hook_duration_seconds_count", outcome="reject") == 1
    assert sample("minichat_outbox_hook_duration_seconds_count", outcome="retry") == 1
