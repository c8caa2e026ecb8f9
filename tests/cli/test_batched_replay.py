"""`minichat outbox dead-letters replay|discard` in batches: every dead letter once, partition order kept."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path

import pytest

from minichat_host.db.engine import connect_database, dialect_name
from minichat_host.outbox import DeadLetter, DeadLetterFilter, list_dead_letters, replay_dead_letters
from minichat_host.outbox.dead_letters import discard_dead_letters

from .helpers import QUEUE, deliver_all, make_dead_letters, run, write_config

LETTERS = 1200


async def all_letters(url: str) -> list[DeadLetter]:
    database = await connect_database(url)
    try:
        return await list_dead_letters(database, QUEUE, status=None, limit=10 * LETTERS)
    finally:
        await database.disconnect()


def test_a_large_replay_in_batches_delivers_every_message_once_in_partition_order(
    migrated_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(make_dead_letters(migrated_db_url, LETTERS))
    letters = asyncio.run(all_letters(migrated_db_url))
    assert len(letters) == LETTERS and {x.status for x in letters} == {"pending"}
    # What each partition must receive again: its dead letters in their original order.
    expected: dict[int, list[bytes]] = defaultdict(list)
    for letter in sorted(letters, key=lambda x: (x.partition, x.seq)):
        expected[letter.partition].append(letter.payload)
    assert len(expected) > 1, "the messages are spread over several partitions"
    config = write_config(tmp_path, migrated_db_url)

    letters_cmd = ["--config", config, "outbox", "dead-letters"]
    code, out, err = run(capsys, *letters_cmd, "replay", "--all", "--batch-size", "500", "--json")
    assert code == 0, err
    replayed = json.loads(out)["replayed"]
    assert sorted(replayed) == sorted(x.id for x in letters), "every dead letter, each once"
    assert len(set(replayed)) == LETTERS
    assert err == "", "no progress bar and no chatter when stderr is not a terminal"
    assert {x.status for x in asyncio.run(all_letters(migrated_db_url))} == {"resolved"}

    deliveries = asyncio.run(deliver_all(migrated_db_url))
    assert len(deliveries) == LETTERS
    received: dict[int, list[bytes]] = defaultdict(list)
    for delivery in deliveries:
        received[delivery.partition].append(delivery.payload)
    assert received == expected, "at the end of each partition, in the original order"
    for partition in received:
        seqs = [d.seq for d in deliveries if d.partition == partition]
        original = [x.seq for x in letters if x.partition == partition]
        assert seqs == sorted(seqs) and min(seqs) > max(original), "after everything already queued"

    code, out, _ = run(capsys, *letters_cmd, "replay", "--all", "--json")
    assert (code, json.loads(out)) == (0, {"replayed": []}), "nothing is replayed twice"


async def test_batches_report_progress_and_commit_one_by_one(sqlite_migrated_db_url: str) -> None:
    url = sqlite_migrated_db_url
    await make_dead_letters(url, 12)
    database = await connect_database(url)
    try:
        calls: list[tuple[int, int]] = []
        replayed = await replay_dead_letters(
            database,
            dialect_name(url),
            DeadLetterFilter(queue=QUEUE),
            batch_size=5,
            progress=lambda done, total: calls.append((done, total)),
        )
        assert calls == [(0, 12), (5, 12), (10, 12), (12, 12)]
        assert len(replayed) == 12
        order = [(x.partition_id, x.seq) for x in replayed]
        assert order == sorted(order), "batches go through the partitions in order"
        with pytest.raises(ValueError, match="at least 1"):
            await replay_dead_letters(database, "sqlite", DeadLetterFilter(), batch_size=0)
    finally:
        await database.disconnect()


async def test_a_failing_batch_leaves_the_earlier_batches_replayed(sqlite_migrated_db_url: str) -> None:
    """Each batch is its own transaction: what committed before a failure stays replayed."""
    url = sqlite_migrated_db_url
    await make_dead_letters(url, 10)
    database = await connect_database(url)

    def stop_after_first_batch(done: int, total: int) -> None:
        if done == 4:
            raise RuntimeError("interrupted")

    try:
        with pytest.raises(RuntimeError, match="interrupted"):
            await replay_dead_letters(
                database, "sqlite", DeadLetterFilter(), batch_size=4, progress=stop_after_first_batch
            )
        statuses = [x.status for x in await list_dead_letters(database, QUEUE, status=None)]
        assert sorted(statuses) == ["pending"] * 6 + ["resolved"] * 4
    finally:
        await database.disconnect()


def test_discard_all_in_batches(
    sqlite_migrated_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = sqlite_migrated_db_url
    asyncio.run(make_dead_letters(url, 30))
    config = write_config(tmp_path, url)

    letters_cmd = ["--config", config, "outbox", "dead-letters"]
    code, out, err = run(capsys, *letters_cmd, "discard", "--all", "--batch-size", "7", "--json")
    assert code == 0, err
    discarded = json.loads(out)["discarded"]
    assert len(discarded) == 30 and discarded == sorted(set(discarded))
    assert {x.status for x in asyncio.run(all_letters(url))} == {"discarded"}

    code, out, _ = run(capsys, *letters_cmd, "discard", "--all", "--json")
    assert (code, json.loads(out)) == (0, {"discarded": []})


async def test_discard_still_refuses_an_empty_filter_unless_told_everything(
    sqlite_migrated_db_url: str,
) -> None:
    await make_dead_letters(sqlite_migrated_db_url, 3)
    database = await connect_database(sqlite_migrated_db_url)
    try:
        with pytest.raises(ValueError, match="needs ids or a filter"):
            await discard_dead_letters(database, DeadLetterFilter(), batch_size=2)
        calls: list[tuple[int, int]] = []
        ids = await discard_dead_letters(
            database, DeadLetterFilter(), batch_size=2, everything=True, progress=lambda *c: calls.append(c)
        )
        assert len(ids) == 3 and calls == [(0, 3), (2, 3), (3, 3)]
    finally:
        await database.disconnect()
