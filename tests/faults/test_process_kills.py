"""kill -9 of a real host process (SPEC §10 "nothing is lost"), then a restart on the same database.

The books are checked from the outside: the turns and quota rows in the database, the usage ledger the
bundled `policy_static` plugin writes (it drops a redelivered dedupe key) and the JSON lines of the bundled
`audit_log` plugin (which appends whatever it is given: a redelivered event appears twice, and a consumer
deduplicates turn audit events by `turn_id`, of which there is exactly one terminal event per turn).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from faults.conftest import HostFactory
from faults.procs import (
    PREFIX,
    Books,
    ProcessError,
    StreamResult,
    api_json,
    create_chat,
    credit_totals,
    dead_letter_count,
    free_port,
    host_config,
    outbox_backlog,
    stream_message,
    turn_books,
    wait_settled,
    wait_until,
)
from minichat_host import constants

pytestmark = pytest.mark.slow


async def wait_for_deltas(results: list[StreamResult], count: int, within: float = 30.0) -> None:
    async def enough() -> bool:
        return all(result.deltas() >= count for result in results)

    await wait_until(enough, within=within, interval=0.05, what=f"{count} deltas on every stream")


async def test_sigkill_mid_stream_the_watchdog_finalizes_after_restart(
    migrated_db_url: str,
    connect: Callable[..., Any],
    make_host: HostFactory,
    slow_provider: str,
    fast_provider: str,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    config = host_config(
        db_url=migrated_db_url,
        data_dir=data_dir,
        port=free_port(),
        providers={"slow": slow_provider, "fast": fast_provider},
    )
    host = make_host(config)
    await host.start()
    database = await connect(migrated_db_url)
    async with aiohttp.ClientSession() as session:
        chats = [await create_chat(session, host.base_url, "slow") for _ in range(3)]
        results = [StreamResult(status=0) for _ in chats]
        streams = [
            asyncio.create_task(
                stream_message(session, host.base_url, chat, "tell me a long story", progress=r)
            )
            for chat, r in zip(chats, results, strict=True)
        ]
        await wait_for_deltas(results, 3)
        host.kill()
        await asyncio.gather(*streams)
    assert all(r.status == 200 and r.broken and r.terminal is None for r in results), results
    request_ids = {r.request_id for r in results}

    running = [t for t in await turn_books(database) if str(t.request_id) in request_ids]
    assert len(running) == 3 and {t.state for t in running} == {"running"}
    reserved, spent = await credit_totals(database)
    assert reserved > 0 and spent == 0, "the reserves of the killed turns are still held"
    assert Books.read([data_dir]).usage_events == []

    await host.start()
    async with aiohttp.ClientSession() as session:

        async def all_terminal() -> bool:
            states = []
            for chat, request_id in zip(chats, [r.request_id for r in results], strict=True):
                status, _, body = await api_json(
                    session, "GET", f"{host.base_url}{PREFIX}/chats/{chat}/turns/{request_id}"
                )
                assert status == 200, body
                states.append((body["state"], body.get("error_code")))
            return (
                all(state != "running" for state, _ in states) and states == [("error", "orphan_timeout")] * 3
            )

        await wait_until(all_terminal, within=30, what="the watchdog finalizing the orphaned turns")

        # The service is usable on the restarted process.
        fresh_chat = await create_chat(session, host.base_url, "fast")
        fresh = await stream_message(session, host.base_url, fresh_chat, "hello again")
        assert fresh.terminal == "done", fresh

    turns = [t for t in await turn_books(database) if str(t.request_id) in request_ids]
    assert {(t.state, t.error_code) for t in turns} == {("failed", "orphan_timeout")}
    keys = {t.dedupe_key for t in await turn_books(database)}
    assert len(keys) == 4

    async def delivered() -> Books | None:
        books = Books.read([data_dir])
        complete = set(books.usage_by_key) >= keys and len(books.turn_audits_by_turn) >= 4
        return books if complete and await outbox_backlog(database) == 0 else None

    books: Books = await wait_until(delivered, within=30, what="usage and audit events of all four turns")
    assert books.torn_lines == 0
    assert set(books.usage_by_key) == keys and set(books.usage_by_key.values()) == {1}, books.usage_by_key
    assert set(books.turn_audits_by_turn.values()) == {1}, books.turn_audits_by_turn
    for turn in turns:
        (usage,) = books.usage_for(turn.dedupe_key)
        assert (usage["terminal_state"], usage["billing_outcome"], usage["settlement_method"]) == (
            "failed",
            "aborted",
            "estimated",
        )
        (audit,) = books.audits_for(str(turn.turn_id))
        assert (audit["event_type"], audit["error_code"]) == ("turn_failed", "orphan_timeout")
    reserved, spent = await credit_totals(database)
    assert reserved == 0, "every reserve was released"
    assert spent == sum(event["actual_credits_micro"] for event in books.usage_events)
    assert await dead_letter_count(database) == 0
    assert await host.stop() == 0


class Load:
    """`clients` tasks, each sending messages one after another into its own chat until stopped or the
    host goes away; every result is kept."""

    def __init__(self, base_url: str, clients: int) -> None:
        self.base_url = base_url
        self.clients = clients
        self.results: list[StreamResult] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, session: aiohttp.ClientSession) -> None:
        self._tasks = [asyncio.create_task(self._client(session, n)) for n in range(self.clients)]

    async def _client(self, session: aiohttp.ClientSession, number: int) -> None:
        try:
            chat = await create_chat(session, self.base_url, "fast")
        except (aiohttp.ClientError, OSError, ProcessError):
            return
        while not self._stop.is_set():
            result = await stream_message(session, self.base_url, chat, f"message from client {number}")
            self.results.append(result)
            if result.status == 0:  # the host is gone
                return

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def done_request_ids(self) -> set[str]:
        return {r.request_id for r in self.results if r.terminal == "done" and r.request_id}


async def test_sigkill_while_the_outbox_delivers_loses_and_doubles_nothing(
    pg_db_url: str,
    connect: Callable[..., Any],
    make_host: HostFactory,
    fast_provider: str,
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    # One partition, one message per batch: delivery trails the turns, so a kill lands in the middle of it.
    config = host_config(
        db_url=pg_db_url,
        data_dir=data_dir,
        port=free_port(),
        providers={"fast": fast_provider},
        outbox={
            "num_partitions": 1,
            "max_concurrent_partitions": 1,
            "lease_seconds": 2,
            "lease_headroom_seconds": 0.5,
            "poll_interval_seconds": 0.2,
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 1,
            "queues": {
                constants.QUEUE_USAGE: {"timeout_seconds": 1, "batch_size": 1},
                constants.QUEUE_AUDIT: {"timeout_seconds": 1, "batch_size": 1},
            },
        },
    )
    host = make_host(config)
    await host.start()
    database = await connect(pg_db_url)
    loads: list[Load] = []
    backlog_at_kill: list[int] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            load = Load(host.base_url, clients=8)
            loads.append(load)
            load.start(session)
            delivered_before = len(Books.read([data_dir]).usage_events)

            async def delivering(delivered_before: int = delivered_before) -> int:
                # Events delivered in this round, more committed and waiting: the outbox is mid-delivery.
                delivered = len(Books.read([data_dir]).usage_events) - delivered_before
                backlog = await outbox_backlog(database)
                return backlog if delivered >= 10 and backlog >= 5 else 0

            backlog_at_kill.append(await wait_until(delivering, within=60, interval=0.02, what="delivery"))
            host.kill()
            await load.stop()
            await host.start()

    await wait_settled(database, [data_dir], within=60, hosts=[host])
    turns = await turn_books(database)
    books = Books.read([data_dir])
    assert all(backlog > 0 for backlog in backlog_at_kill)
    assert books.torn_lines == 0

    # Every turn is terminal: completed, or orphaned by the kill and finalized by the watchdog.
    assert {(t.state, t.error_code) for t in turns} <= {("completed", None), ("failed", "orphan_timeout")}
    by_request = {str(t.request_id): t for t in turns}
    for load in loads:
        for request_id in load.done_request_ids():
            assert by_request[request_id].state == "completed", "`done` is only sent after the commit"

    # Usage: exactly one ledger line per dedupe key (the plugin drops a redelivered key).
    assert set(books.usage_by_key) == {t.dedupe_key for t in turns}
    assert set(books.usage_by_key.values()) == {1}, books.usage_by_key.most_common(3)
    for turn in turns:
        (usage,) = books.usage_for(turn.dedupe_key)
        assert usage["terminal_state"] == turn.state

    # Audit: every turn's terminal event arrived; a redelivery (killed between hook and ack) may repeat it
    # in the raw log, identical, and a consumer keeps one per turn_id.
    assert set(books.turn_audits_by_turn) == {str(t.turn_id) for t in turns}
    for turn in turns:
        first, *repeats = books.audits_for(str(turn.turn_id))
        assert all(repeat == first for repeat in repeats)
        expected = "turn_completed" if turn.state == "completed" else "turn_failed"
        assert first["event_type"] == expected

    reserved, spent = await credit_totals(database)
    assert reserved == 0
    assert spent == sum(event["actual_credits_micro"] for event in books.usage_events)
    assert await dead_letter_count(database) == 0
    assert await host.stop() == 0
    orphaned = sum(t.state == "failed" for t in turns)
    print(
        f"\n{len(turns)} turns ({orphaned} orphaned by the kills), {backlog_at_kill} messages undelivered "
        f"at the kills, {sum(books.turn_audits_by_turn.values()) - len(turns)} redelivered audit line(s)"
    )


async def test_sigkill_in_the_middle_of_the_finalizing_transaction(
    pg_db_url: str,
    connect: Callable[..., Any],
    make_host: HostFactory,
    medium_provider: str,
    tmp_path: Path,
) -> None:
    """The finalizer has won the turn's compare-and-set and is settling quota when the process dies: its
    transaction is rolled back with the connection, so the turn is still `running` and the watchdog
    finalizes it after the restart - one terminal state, one usage event, one audit event, no reserve."""
    data_dir = tmp_path / "data"
    host = make_host(
        host_config(
            db_url=pg_db_url, data_dir=data_dir, port=free_port(), providers={"medium": medium_provider}
        )
    )
    await host.start()
    database = await connect(pg_db_url)
    url = make_url(pg_db_url)
    blocker = await asyncpg.connect(host=url.host, port=url.port, user=url.username, database=url.database)
    try:
        async with aiohttp.ClientSession() as session:
            chat = await create_chat(session, host.base_url, "medium")
            result = StreamResult(status=0)
            stream = asyncio.create_task(
                stream_message(session, host.base_url, chat, "finish me", progress=result)
            )
            await wait_for_deltas([result], 1)
            # Hold the user's quota rows: the finalizer wins the turn row, then waits here to settle.
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute(
                "SELECT 1 FROM quota_usage WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE",
                uuid.UUID(constants.DEV_TENANT_ID),
                uuid.UUID(constants.DEV_USER_ID),
            )

            async def finalizer_waits() -> bool:
                # A row-lock wait on our transaction: the finalizer, which holds the user's advisory lock
                # and has updated the turn row in its own (uncommitted) transaction. The list of backends
                # is a snapshot taken once per transaction: cleared, so that a connection the host opened
                # since the first look shows.
                await blocker.execute("SELECT pg_stat_clear_snapshot()")
                waiting = await blocker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND wait_event = 'transactionid'"
                )
                return bool(waiting)

            await wait_until(finalizer_waits, within=30, interval=0.05, what="the finalizer blocked on quota")
            host.kill()
            await transaction.rollback()
            await stream
    finally:
        await blocker.close()
    assert result.broken and result.terminal is None, "no `done` for a turn that was not committed"
    (turn,) = await turn_books(database)
    assert turn.state == "running", "the finalizer's transaction died with the process"

    await host.start()
    await wait_settled(database, [data_dir], within=30, hosts=[host])
    (turn,) = await turn_books(database)
    assert (turn.state, turn.error_code) == ("failed", "orphan_timeout")
    books = Books.read([data_dir])
    assert books.usage_by_key == {turn.dedupe_key: 1}
    assert books.turn_audits_by_turn == {str(turn.turn_id): 1}
    (usage,) = books.usage_events
    assert (usage["billing_outcome"], usage["settlement_method"]) == ("aborted", "estimated")
    reserved, spent = await credit_totals(database)
    assert (reserved, spent) == (0, usage["actual_credits_micro"])
    assert await host.stop() == 0
