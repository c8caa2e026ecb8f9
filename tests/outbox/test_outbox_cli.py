"""`minichat outbox status` and `minichat outbox dead-letters ...` against a real database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from minichat_host.cli import main
from minichat_host.db.engine import connect_database, dialect_name
from minichat_host.outbox import Outbox, get_dead_letter, queue_status
from minichat_host.plugins.errors import PermanentError

from .helpers import QUEUE, Recorder, fast_config


def write_config(tmp_path: Path, url: str) -> str:
    path = tmp_path / "minichat.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": url}}))
    return str(path)


async def make_dead_letters(url: str) -> None:
    database = await connect_database(url)
    try:
        outbox = Outbox(database, fast_config(), dialect=dialect_name(url))
        reject = {p: [PermanentError(f"bad {p.decode()}")] for p in (b'{"n":2}', b'{"n":3}')}
        outbox.register_queue(QUEUE, Recorder(script=reject), partitions=2, timeout=1.0)
        await outbox.ensure_queues()
        async with outbox.transaction() as tx:
            for n in (1, 2, 3):
                await tx.enqueue(QUEUE, "tenant", {"n": n})
        await outbox.run_once()
    finally:
        await database.disconnect()


async def read_state(url: str) -> tuple[list[int], list[str]]:
    database = await connect_database(url)
    try:
        statuses = await queue_status(database)
        letters = [await get_dead_letter(database, i) for i in (1, 2)]
        return [s.last_seq for s in statuses], [x.status if x else "missing" for x in letters]
    finally:
        await database.disconnect()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_and_dead_letters_commands(
    migrated_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(make_dead_letters(migrated_db_url))
    config = write_config(tmp_path, migrated_db_url)

    code, out, _ = run(capsys, "--config", config, "outbox", "status", "--json")
    assert code == 0
    rows = json.loads(out)
    assert sorted((r["queue"], r["partition"]) for r in rows) == [(QUEUE, 0), (QUEUE, 1)]
    assert sum(r["dead_letters"] for r in rows) == 2
    code, out, _ = run(capsys, "--config", config, "outbox", "status")
    assert code == 0 and "BACKLOG" in out and QUEUE in out

    code, out, _ = run(capsys, "--config", config, "outbox", "dead-letters", "list", "--json")
    letters = json.loads(out)
    assert code == 0
    assert sorted((x["seq"], x["payload"], x["last_error"]) for x in letters) == [
        (2, '{"n":2}', 'bad {"n":2}'),
        (3, '{"n":3}', 'bad {"n":3}'),
    ]
    first = min(x["id"] for x in letters)

    code, out, _ = run(capsys, "--config", config, "outbox", "dead-letters", "show", str(first))
    assert code == 0 and '{"n":2}' in out and "reason:" in out and "pending" in out

    code, out, _ = run(capsys, "--config", config, "outbox", "dead-letters", "replay", str(first), "--json")
    assert (code, json.loads(out)) == (0, {"replayed": [first]})
    # Replayed at the end of the partition and already sequenced for a running scheduler to pick up.
    last_seqs, statuses = asyncio.run(read_state(migrated_db_url))
    assert max(last_seqs) == 4
    assert statuses == ["resolved", "pending"]

    code, _, err = run(capsys, "--config", config, "outbox", "dead-letters", "replay", str(first))
    assert code == 1 and "not pending" in err

    code, out, _ = run(
        capsys, "--config", config, "outbox", "dead-letters", "discard", "--all", "--queue", QUEUE
    )
    assert code == 0 and "discarded 1" in out
    code, out, _ = run(
        capsys, "--config", config, "outbox", "dead-letters", "list", "--status", "all", "--json"
    )
    assert sorted(x["status"] for x in json.loads(out)) == ["discarded", "resolved"]

    code, _, err = run(capsys, "--config", config, "outbox", "dead-letters", "replay")
    assert code == 2 and "--all" in err
    code, _, err = run(capsys, "--config", config, "outbox", "dead-letters", "show", "999")
    assert code == 1 and "no dead letter with id 999" in err


def test_an_unmigrated_database_gets_a_clear_message(
    sqlite_db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, sqlite_db_url)
    code, _, err = run(capsys, "--config", config, "outbox", "status")
    assert code == 1
    assert "run `minichat migrate upgrade`" in err
