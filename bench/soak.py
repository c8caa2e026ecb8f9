"""Soak test: concurrent streaming clients against several host replicas on one PostgreSQL, then the books.

Not part of the test suite (it runs for minutes and wants the machine to itself):

    python bench/soak.py [--clients 200] [--duration 60] [--replicas 2] [--tokens 20] [--token-gap-ms 5]

What runs:
- PostgreSQL: `MINICHAT_TEST_PG_URL`, else a throw-away cluster (tests/pg.py); a fresh database migrated once;
- the fake OpenAI server (tests/fakes/openai_server.py) as its own process: every reply `--tokens` tokens,
  `--token-gap-ms` apart;
- `--replicas` processes of `python -m minichat_host serve` on that database (trusted-header auth, the
  bundled `policy_static` with a usage ledger and `audit_log`, each replica with its own files, the outbox
  and the orphan watchdog shared through the database as in production);
- `--clients` clients (spread over the replicas, `--users` users in `--tenants` tenants), each in its own
  chat sending a message, reading the SSE answer to the end, and sending the next one, for `--duration`
  seconds. `--conflict-rate` of the sends also fire a second message into the chat while the first one runs
  (the parallel guard must answer 409).

Then, after the clients stopped and the outbox drained, the books:
- every turn terminal, and every `done` a client saw is a `completed` turn;
- credits reconciled: nothing reserved, and the spent credits equal the usage ledgers' total;
- exactly one usage event per turn (dedupe key) and one audit event per turn (turn_id) across the replicas'
  files (raw repeats — redeliveries — are counted and shown);
- no error answers other than 409 and 429, no SSE `error` events.
The numbers are printed; the exit code is 1 when a book does not balance.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import pg  # noqa: E402 - tests/pg.py, the throw-away PostgreSQL of the test suite
from faults.procs import (  # noqa: E402 - the fault suite's process helpers
    Books,
    FakeProviderProcess,
    HostProcess,
    StreamResult,
    create_chat,
    credit_totals,
    dead_letter_count,
    free_port,
    host_config,
    stream_message,
    turn_books,
    unsettled,
)

from minichat_host.db.engine import connect_database  # noqa: E402
from minichat_host.db.migrate import aupgrade  # noqa: E402

GATEWAY_SECRET = "soak-gateway-secret"
EXPECTED_ERROR_STATUSES = frozenset({409, 429})


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Send:
    """One `messages:stream` call as a client saw it."""

    result: StreamResult
    seconds: float  # request sent → stream closed
    first_token_seconds: float | None
    conflict_probe: bool = False


@dataclass
class Tally:
    sends: list[Send] = field(default_factory=list)
    client_errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def add(self, send: Send) -> None:
        self.sends.append(send)


def identity_headers(client: int, users: int, tenants: int) -> dict[str, str]:
    user = client % users
    tenant = user % tenants
    return {
        "X-Tenant-Id": str(uuid.UUID(int=(1 << 64) + tenant)),
        "X-User-Id": str(uuid.UUID(int=(2 << 64) + user)),
        "X-Gateway-Secret": GATEWAY_SECRET,
    }


async def timed_stream(
    session: aiohttp.ClientSession, base_url: str, chat: str, headers: dict[str, str], text: str
) -> Send:
    progress = StreamResult(status=0)
    started = time.perf_counter()
    first_token: list[float] = []

    async def watch() -> None:
        while not progress.events or progress.events[-1] not in ("delta", "done", "error"):
            if progress.status not in (0, 200):
                return
            await asyncio.sleep(0.005)
        first_token.append(time.perf_counter() - started)

    watcher = asyncio.create_task(watch())
    result = await stream_message(session, base_url, chat, text, headers=headers, progress=progress)
    elapsed = time.perf_counter() - started
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    return Send(result, elapsed, first_token[0] if first_token else None)


async def client_loop(
    number: int,
    session: aiohttp.ClientSession,
    base_url: str,
    args: argparse.Namespace,
    stop_at: float,
    tally: Tally,
    rng: random.Random,
) -> None:
    headers = identity_headers(number, args.users, args.tenants)
    try:
        chat = await create_chat(session, base_url, "fast", headers=headers)
    except Exception as exc:
        tally.client_errors[f"create chat: {type(exc).__name__}"] += 1
        return
    sequence = 0
    while time.monotonic() < stop_at:
        sequence += 1
        text = f"client {number} message {sequence}: tell me something"
        main = asyncio.create_task(timed_stream(session, base_url, chat, headers, text))
        probe: asyncio.Task[Send] | None = None
        if rng.random() < args.conflict_rate:
            await asyncio.sleep(0.01)
            probe = asyncio.create_task(timed_stream(session, base_url, chat, headers, text + " (again)"))
        tally.add(await main)
        if probe is not None:
            probed = await probe
            probed.conflict_probe = True
            tally.add(probed)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    with pg.postgres_server() as server:
        name = pg.new_database_name("soak")
        url = pg.create_database(server, name)
        try:
            yield url
        finally:
            with contextlib.suppress(Exception):
                pg.drop_database(server, name)


async def run(args: argparse.Namespace, workdir: Path, db_url: str) -> int:
    await aupgrade(db_url)
    fake = FakeProviderProcess(workdir / "fake.log", tokens=args.tokens, token_gap_ms=args.token_gap_ms)
    fake_url = fake.start()
    hosts: list[HostProcess] = []
    data_dirs: list[Path] = []
    try:
        for replica in range(args.replicas):
            data_dir = workdir / f"replica-{replica}"
            data_dirs.append(data_dir)
            port = free_port()
            config = host_config(
                db_url=db_url,
                data_dir=data_dir,
                port=port,
                providers={"fast": fake_url},
                read_timeout_seconds=60,
                server={
                    "host": "127.0.0.1",
                    "port": port,
                    "data_dir": str(data_dir),
                    "log_level": "WARNING",
                    "shutdown_timeout_seconds": 30,
                },
                database={"url": db_url, "pool_max_size": args.pool_size, "migrate_on_start": False},
                auth={"mode": "trusted_headers", "trusted_headers": {"secret": GATEWAY_SECRET}},
                # Production-like timings: nothing here should be orphaned or time out under load.
                streaming={"sse_ping_interval_seconds": 15, "progress_update_interval_seconds": 2},
                orphan_watchdog={"enabled": True, "timeout_secs": 120, "scan_interval_secs": 5},
                outbox={
                    "lease_seconds": 30,
                    "lease_headroom_seconds": 2,
                    "poll_interval_seconds": 1,
                    "retry_base_seconds": 1,
                    "retry_max_seconds": 30,
                    "queues": {},
                },
            )
            hosts.append(HostProcess(config, workdir, name=f"replica-{replica}"))
        await asyncio.gather(*(host.start() for host in hosts))
        log(f"{len(hosts)} replicas up: {', '.join(h.base_url for h in hosts)}; fake provider {fake_url}")

        tally = Tally()
        rng = random.Random(args.seed)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
        load_started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            stop_at = load_started + args.duration
            await asyncio.gather(
                *(
                    client_loop(n, session, hosts[n % len(hosts)].base_url, args, stop_at, tally, rng)
                    for n in range(args.clients)
                )
            )
        load_seconds = time.monotonic() - load_started
        log(
            f"load done after {load_seconds:.1f} s: {len(tally.sends)} sends; waiting for the books to settle"
        )

        database = await connect_database(db_url, max_size=2)
        try:
            settle_started = time.monotonic()
            state = await unsettled(database, data_dirs)
            while state is not None and time.monotonic() - settle_started < args.settle_timeout:
                await asyncio.sleep(0.5)
                state = await unsettled(database, data_dirs)
            settle_seconds = time.monotonic() - settle_started
            return await report(args, tally, database, data_dirs, hosts, load_seconds, settle_seconds, state)
        finally:
            await database.disconnect()
    finally:
        for host in hosts:
            with contextlib.suppress(Exception):
                code = await host.stop()
                if code != 0:
                    log(f"{host.name} exited with {code}")
        fake.stop()


async def report(
    args: argparse.Namespace,
    tally: Tally,
    database: Any,
    data_dirs: list[Path],
    hosts: list[HostProcess],
    load_seconds: float,
    settle_seconds: float,
    unsettled_state: str | None,
) -> int:
    failures: list[str] = []
    turns = await turn_books(database)
    books = Books.read(data_dirs)
    states = collections.Counter((t.state, t.error_code) for t in turns)
    statuses = collections.Counter(s.result.status for s in tally.sends)
    problems = collections.Counter(
        f"{s.result.status} {(s.result.problem or {}).get('code')}"
        for s in tally.sends
        if s.result.status != 200
    )
    sse_errors = collections.Counter(s.result.error_code for s in tally.sends if s.result.terminal == "error")
    broken = sum(1 for s in tally.sends if s.result.status == 200 and s.result.broken)
    done = [s for s in tally.sends if s.result.terminal == "done"]
    latencies = [s.seconds for s in done]
    first_tokens = [s.first_token_seconds for s in done if s.first_token_seconds is not None]
    reserved, spent = await credit_totals(database)
    ledger_total = sum(event["actual_credits_micro"] for event in _unique(books.usage_events, "dedupe_key"))
    turn_keys = {t.dedupe_key for t in turns}
    turn_ids = {str(t.turn_id) for t in turns}
    by_request = {str(t.request_id): t for t in turns}
    per_replica = [len(Books.read([d]).usage_events) for d in data_dirs]

    if unsettled_state is not None:
        failures.append(f"the books did not settle within {args.settle_timeout} s: {unsettled_state}")
    if any(t.state == "running" for t in turns):
        failures.append(f"{sum(t.state == 'running' for t in turns)} turn(s) still running")
    unexpected = {k: v for k, v in statuses.items() if k not in (200, *EXPECTED_ERROR_STATUSES)}
    if unexpected:
        failures.append(f"unexpected HTTP statuses: {unexpected} ({dict(problems)})")
    if sse_errors:
        failures.append(f"SSE error events: {dict(sse_errors)}")
    if broken:
        failures.append(f"{broken} stream(s) ended without a terminal event")
    not_committed = [
        s
        for s in done
        if by_request.get(s.result.request_id or "") is None
        or by_request[s.result.request_id or ""].state != "completed"
    ]
    if not_committed:
        failures.append(f"{len(not_committed)} `done` answer(s) without a completed turn")
    if reserved != 0:
        failures.append(f"{reserved} micro-credits still reserved")
    if spent != ledger_total:
        failures.append(f"spent {spent} micro-credits but the usage ledgers total {ledger_total}")
    if set(books.usage_by_key) != turn_keys:
        missing = len(turn_keys - set(books.usage_by_key))
        extra = len(set(books.usage_by_key) - turn_keys)
        failures.append(f"usage events: {missing} turn(s) without one, {extra} for no turn")
    if set(books.turn_audits_by_turn) != turn_ids:
        missing = len(turn_ids - set(books.turn_audits_by_turn))
        failures.append(f"audit events: {missing} turn(s) without one")
    if await dead_letter_count(database):
        failures.append(f"{await dead_letter_count(database)} dead letter(s)")
    if books.torn_lines:
        failures.append(f"{books.torn_lines} unreadable ledger/audit line(s)")

    usage_repeats = sum(books.usage_by_key.values()) - len(books.usage_by_key)
    audit_repeats = sum(books.turn_audits_by_turn.values()) - len(books.turn_audits_by_turn)
    print("== minichat soak ==")
    print(
        f"setup: {args.clients} clients, {len(hosts)} replicas, {args.users} users / {args.tenants} tenants, "
        f"{args.duration:.0f} s, replies of {args.tokens} tokens {args.token_gap_ms:g} ms apart, "
        f"conflict probes {args.conflict_rate:.0%}"
    )
    print(
        f"sends: {len(tally.sends)} ({len(tally.sends) / load_seconds:.1f}/s); "
        f"HTTP {dict(sorted(statuses.items()))}; "
        f"answered `done` {len(done)} ({len(done) / load_seconds:.1f} turns/s)"
    )
    if problems:
        print(f"error answers: {dict(problems)}")
    if tally.client_errors:
        print(f"client errors: {dict(tally.client_errors)}")
    print(
        f"stream time (send → done): p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
        f"p95 {percentile(latencies, 0.95) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms; "
        f"first token p50 {percentile(first_tokens, 0.5) * 1000:.0f} ms, "
        f"p99 {percentile(first_tokens, 0.99) * 1000:.0f} ms"
    )
    print(f"turns: {len(turns)} {dict((f'{s}/{c}' if c else s, n) for (s, c), n in states.items())}")
    print(f"outbox drained {settle_seconds:.1f} s after the load; usage events per replica {per_replica}")
    print(
        f"books: reserved {reserved}, spent {spent} = ledger {ledger_total} micro-credits; "
        f"usage keys {len(books.usage_by_key)} (raw repeats {usage_repeats}), "
        f"audit turns {len(books.turn_audits_by_turn)} (raw repeats {audit_repeats})"
    )
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("books balance: OK")
    return 0


def _unique(events: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    seen: set[Any] = set()
    unique = []
    for event in events:
        if event.get(key) not in seen:
            seen.add(event.get(key))
            unique.append(event)
    return unique


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=20, help="tokens per fake reply")
    parser.add_argument("--token-gap-ms", type=float, default=5.0)
    parser.add_argument("--conflict-rate", type=float, default=0.02, help="share of sends probed with a 2nd")
    parser.add_argument("--pool-size", type=int, default=20, help="database pool per replica")
    parser.add_argument("--settle-timeout", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, ledgers)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="minichat-soak-"))
    log(f"work directory {workdir}")
    try:
        with postgres() as db_url:
            return asyncio.run(run(args, workdir, db_url))
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
