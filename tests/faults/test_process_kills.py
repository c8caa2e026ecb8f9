"""kill -9 of a real host process (SPEC §10 "nothing is lost"), then a restart on the same database.

The books are checked from the outside: the turns and quota rows in the database, the usage ledger the
bundled `policy_static` plugin writes (it drops a redelivered dedupe key) and the JSON lines of the bundled
`audit_log` plugin (which appends whatever it is given: a redelivered event appears twice, and a consumer
deduplicates turn audit events by `turn_id`, of which there is exactly one terminal event per turn).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from faults.conftest import HostFactory
from faults.procs import (
    PREFIX,
    Books,
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
    wait_until,
)

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
            asyncio.create_task(stream_message(session, host.base_url, chat, "tell me a long story", progress=r))
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
            return all(state != "running" for state, _ in states) and states == [("error", "orphan_timeout")] * 3

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
