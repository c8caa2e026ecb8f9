"""PostgreSQL restarted under load (a dedicated cluster, so no other test sees the outage).

While the server is down every request is answered with 503 problem+json `service_unavailable` (never a
500, never HTML), a stream that was already open still ends with a terminal event, and once PostgreSQL is
back the same host process serves again — no restart — and the books balance: every turn terminal, every
reserve released, one usage and one audit event per turn.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pg
import pytest

from faults.conftest import HostFactory
from faults.procs import (
    PREFIX,
    Books,
    StreamResult,
    api_json,
    credit_totals,
    dead_letter_count,
    free_port,
    host_config,
    stream_message,
    turn_books,
    wait_settled,
    wait_until,
)

pytestmark = pytest.mark.slow


class RestartableCluster(pg.TemporaryCluster):
    """A throw-away cluster (tests/pg.py) that can be stopped and started again on the same port."""

    def pg_ctl(self, *arguments: str) -> None:
        self._run([str(self.bin_dir / "pg_ctl"), "--pgdata", str(self.data_dir), *arguments], timeout=60)

    def crash(self) -> None:
        """`immediate` shutdown: the server goes away like a crash, connections are cut."""
        self.pg_ctl("--mode", "immediate", "--wait", "stop")

    def restart(self) -> None:
        self.pg_ctl("--log", str(self.log_file), "--options", f"-p {self.port}", "--wait", "start")


@pytest.fixture
def cluster() -> Iterator[RestartableCluster]:
    server = RestartableCluster(pg.ensure_bin_dir())
    try:
        server.start()
        # The throw-away cluster acknowledges commits before their WAL is written (tests/pg.py); a crash
        # would then lose commits the host already reported. This test crashes it, so commits are durable.
        pg.execute_admin(server.url, "ALTER SYSTEM SET synchronous_commit = on", "SELECT pg_reload_conf()")
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Outcome:
    kind: str
    status: int
    content_type: str
    code: str | None


class Traffic:
    """Clients that keep listing chats and sending messages; every answer is recorded as an Outcome."""

    def __init__(self, base_url: str, clients: int) -> None:
        self.base_url = base_url
        self.clients = clients
        self.outcomes: list[Outcome] = []
        self.streams: list[StreamResult] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, session: aiohttp.ClientSession) -> None:
        self._tasks = [asyncio.create_task(self._client(session, n)) for n in range(self.clients)]

    def successes(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind and o.status in (200, 201))

    def record(self, kind: str, status: int, content_type: str, body: Any) -> None:
        code = body.get("code") if isinstance(body, dict) else None
        self.outcomes.append(Outcome(kind, status, content_type, code))

    async def _client(self, session: aiohttp.ClientSession, number: int) -> None:
        chat: str | None = None
        while not self._stop.is_set():
            status, content_type, body = await api_json(session, "GET", f"{self.base_url}{PREFIX}/chats")
            self.record("list", status, content_type, body)
            if chat is None:
                status, content_type, body = await api_json(
                    session, "POST", f"{self.base_url}{PREFIX}/chats", json_body={"model": "fast"}
                )
                self.record("create", status, content_type, body)
                chat = body["id"] if status == 201 else None
            if chat is not None:
                result = await stream_message(session, self.base_url, chat, f"client {number} says hi")
                self.streams.append(result)
                self.record("stream", result.status, result.content_type, result.problem)
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def test_postgres_restart_gives_503_and_the_host_recovers_without_a_restart(
    cluster: RestartableCluster,
    connect: Callable[..., Any],
    make_host: HostFactory,
    fast_provider: str,
    tmp_path: Path,
) -> None:
    db_url = pg.create_database(cluster.url, "minichat")
    data_dir = tmp_path / "data"
    host = make_host(
        host_config(db_url=db_url, data_dir=data_dir, port=free_port(), providers={"fast": fast_provider})
    )
    await host.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        traffic = Traffic(host.base_url, clients=4)
        traffic.start(session)
        await wait_until(
            lambda: traffic.successes("stream") >= 8, within=60, interval=0.05, what="load before"
        )

        cluster.crash()
        outage_start = len(traffic.outcomes)
        await wait_until(
            lambda: sum(o.status == 503 for o in traffic.outcomes[outage_start:]) >= 12,
            within=60,
            interval=0.05,
            what="503 answers during the outage",
        )
        # Keep it down a little longer, so the outbox loops and the watchdog meet the outage too.
        await asyncio.sleep(1.5)
        during = traffic.outcomes[outage_start:]
        cluster.restart()

        recovered_from = len(traffic.outcomes)
        await wait_until(
            lambda: (
                sum(o.kind == "stream" and o.status == 200 for o in traffic.outcomes[recovered_from:]) >= 8
            ),
            within=60,
            interval=0.05,
            what="streams succeeding again after PostgreSQL came back",
        )
        await traffic.stop()
    assert host.alive and host.starts == 1, "the host recovered on its own"

    # Every answer had an expected status, and every error was problem+json with its code. A 409 is the
    # parallel guard: a turn whose finalization met the outage stays running until the watchdog ends it.
    statuses = collections.Counter((o.kind, o.status) for o in traffic.outcomes)
    assert {status for _, status in statuses} <= {200, 201, 409, 503}, statuses
    for outcome in traffic.outcomes:
        if outcome.status >= 400:
            assert outcome.content_type == "application/problem+json", outcome
            if outcome.status == 409:
                assert (outcome.kind, outcome.code) == ("stream", "turn_already_running"), outcome
            else:
                assert outcome.code == "service_unavailable", outcome
    assert {o.kind for o in during if o.status == 503} >= {"list", "stream"}, collections.Counter(during)
    # An open stream always ends with a terminal event, never with a cut connection: `done`, or an error
    # when its turn could not be finalized (domain/streaming.py sends `internal_error` for a finalizer that
    # raised and `stream_interrupted` for a run that ended without a terminal frame).
    for stream in traffic.streams:
        if stream.status == 200:
            assert not stream.broken and stream.terminal in ("done", "error"), stream
            if stream.terminal == "error":
                assert stream.error_code in ("internal_error", "stream_interrupted"), stream

    database = await connect(db_url)

    await wait_settled(database, [data_dir], within=60, hosts=[host])
    turns = await turn_books(database)
    books = Books.read([data_dir])
    by_request = {str(t.request_id): t for t in turns}
    for stream in traffic.streams:
        if stream.terminal == "done":
            assert stream.request_id is not None and by_request[stream.request_id].state == "completed"
    assert set(books.usage_by_key) == {t.dedupe_key for t in turns}
    assert set(books.usage_by_key.values()) == {1}
    assert set(books.turn_audits_by_turn) == {str(t.turn_id) for t in turns}
    reserved, spent = await credit_totals(database)
    assert reserved == 0
    assert spent == sum(event["actual_credits_micro"] for event in books.usage_events)
    assert await dead_letter_count(database) == 0
    assert await host.stop() == 0, "graceful shutdown after the outage"
    print(f"\n{len(turns)} turns; answers: {dict(statuses)}")
