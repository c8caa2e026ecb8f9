"""Real processes: SIGKILL between hook and ack (scenario 6), two schedulers on PostgreSQL (scenario 8),
and the single-process rule on SQLite."""

from __future__ import annotations

import itertools
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import databases
import pytest
import sqlalchemy as sa

from minichat_host.db import migrate
from minichat_host.db.engine import connect_database
from minichat_host.outbox import Delivery, Outbox, SchedulerAlreadyRunning, enqueue
from minichat_host.outbox.tables import outbox_processor

from .conftest import OutboxFactory
from .helpers import QUEUE, Recorder, fast_config, read_records, spawn_child, wait_exit, wait_for, wait_ready

pytestmark = pytest.mark.slow


async def test_sigkill_between_hook_success_and_ack_redelivers_after_the_lease_expires(
    make_outbox: OutboxFactory, database: databases.Database, migrated_db_url: str, tmp_path: Path
) -> None:
    lease = 2.0
    parent = make_outbox(fast_config(lease_seconds=lease, lease_headroom_seconds=0.5))
    recorder = Recorder()
    delivered_at: list[Any] = []

    async def after_expiry(delivery: Delivery) -> None:
        delivered_at.append(parent.clock())
        await recorder(delivery)

    parent.register_queue(QUEUE, after_expiry, partitions=2, timeout=1.0)
    await parent.ensure_queues()
    async with parent.transaction() as tx:
        for i in range(1, 4):
            await tx.enqueue(QUEUE, "tenant", str(i).encode())

    out = tmp_path / "child.jsonl"
    child = spawn_child(
        "--url",
        migrated_db_url,
        "--queue",
        QUEUE,
        "--partitions",
        "2",
        "--out",
        str(out),
        "--lease",
        str(lease),
        "--crash-before-ack",
    )
    await wait_ready(child)
    assert await wait_exit(child) == -signal.SIGKILL
    handled = read_records(out)
    assert [r["payload"] for r in handled] == ["1", "2", "3"], (
        "the hook ran for the whole batch, then the kill"
    )
    assert all(r["attempts"] == 0 for r in handled)

    rows = await database.fetch_all(
        sa.select(outbox_processor).where(outbox_processor.c.locked_by.is_not(None))
    )
    assert len(rows) == 1, "the dead child still holds its lease"
    [dead_lease] = rows
    assert dead_lease.processed_seq == 0
    partition_id = dead_lease.partition_id

    # The parent (a fresh scheduler: on SQLite the kernel dropped the child's lock file) waits for the
    # lease to expire, then redelivers everything the child never acked.
    await parent.start()
    await wait_for(lambda: parent.stats.delivered == 3)
    assert recorder.payloads() == [b"1", b"2", b"3"]
    assert [d.attempts for d in recorder.deliveries] == [1, 1, 1]
    assert min(delivered_at) >= dead_lease.locked_until, "no takeover before the lease expired"
    row = await database.fetch_one(
        sa.select(outbox_processor).where(outbox_processor.c.partition_id == partition_id)
    )
    assert row is not None
    assert (row.processed_seq, row.attempts, row.last_error) == (3, 0, None)


async def test_two_processes_on_postgresql_share_partitions_and_deliver_each_message_once(
    pg_db_url: str, tmp_path: Path
) -> None:
    await migrate.aupgrade(pg_db_url)
    database = await connect_database(pg_db_url)
    children = []
    try:
        setup = Outbox(database, fast_config(), dialect="postgresql")
        setup.register_queue(QUEUE, Recorder(), partitions=8, timeout=1.0)
        await setup.ensure_queues()
        outputs = [tmp_path / f"worker-{n}.jsonl" for n in range(2)]
        for output in outputs:
            children.append(
                spawn_child(
                    "--url",
                    pg_db_url,
                    "--queue",
                    QUEUE,
                    "--partitions",
                    "8",
                    "--out",
                    str(output),
                    "--lease",
                    "5",
                    "--delay",
                    "0.004",
                    "--max-concurrent",
                    "2",
                    "--batch-size",
                    "5",
                    "--check-lease",
                )
            )
        for child in children:
            await wait_ready(child)

        expected: set[str] = set()
        for txn in range(40):
            async with database.transaction():
                for i in range(10):
                    payload = f"{txn}-{i}"
                    await enqueue(database, QUEUE, f"tenant-{(txn * 10 + i) % 23}", payload.encode())
                    expected.add(payload)
        await wait_for(lambda: sum(len(read_records(o)) for o in outputs) >= len(expected), within=60)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            assert await wait_exit(child) == 0, child.stderr.read() if child.stderr else ""
        await database.disconnect()

    records = [record for output in outputs for record in read_records(output)]
    assert sorted(r["payload"] for r in records) == sorted(expected), "every message delivered exactly once"
    assert len({(r["partition"], r["seq"]) for r in records}) == len(records), "once per (partition, seq)"
    assert all(r["holder_ok"] for r in records), "the hook only ran while its process held the lease"
    assert all(r["attempts"] == 0 for r in records)
    assert len({r["pid"] for r in records}) == 2, "both processes took part"

    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_partition[record["partition"]].append(record)
    for partition, items in by_partition.items():
        items.sort(key=lambda r: r["start"])
        assert [r["seq"] for r in items] == list(range(1, len(items) + 1)), f"partition {partition} in order"
        for before, after in itertools.pairwise(items):
            if before["pid"] != after["pid"]:
                assert before["end"] <= after["start"], f"partition {partition} held by two processes at once"


async def test_a_second_scheduler_on_one_sqlite_database_refuses(
    sqlite_migrated_db_url: str, tmp_path: Path
) -> None:
    database = await connect_database(sqlite_migrated_db_url)
    first = Outbox(database, fast_config(), dialect="sqlite")
    first.register_queue(QUEUE, Recorder(), partitions=1, timeout=1.0)
    try:
        await first.start()
        # Another process...
        out = str(tmp_path / "refused.jsonl")
        child = spawn_child(
            "--url", sqlite_migrated_db_url, "--queue", QUEUE, "--partitions", "1", "--out", out
        )
        assert await wait_exit(child) == 3
        assert child.stderr is not None
        message = child.stderr.read()
        assert "another outbox scheduler is already running on the SQLite database" in message
        assert "SQLite supports a single minichat process" in message
        # ...and a second scheduler in this process are both refused.
        second = Outbox(database, fast_config(), dialect="sqlite")
        second.register_queue(QUEUE, Recorder(), partitions=1, timeout=1.0)
        with pytest.raises(SchedulerAlreadyRunning, match="use PostgreSQL to run several replicas"):
            await second.start()
        await first.stop()
        await second.start()
        await second.stop()
    finally:
        await first.stop()
        await database.disconnect()
