"""Outbox throughput and latency on SQLite and PostgreSQL, against pgqueuer on the same PostgreSQL.

For each engine, on a fresh migrated database:
1. enqueue: `--messages` messages from `--producers` concurrent producers, each committing transactions
   of `--txn-size` messages through `Outbox.transaction()` (the scheduler is not running) → messages/s;
2. drain: start the scheduler (no-op hook) and time until every message is delivered → messages/s;
3. latency: with the scheduler running, producers commit `--latency-messages` messages at a moderate total
   rate (`--latency-rate` messages/s); p50/p99 of commit → hook. The outbox delivers at once here
   (`--linger 0`); the host's default `outbox.sequencer_linger_seconds` (0.05) adds up to that much to
   trade for fewer, larger sequencing and delivery rounds.
Then pgqueuer (installed into this venv from PyPI if missing; never a project dependency) runs the same
three steps on a fresh database of the same PostgreSQL server: the same message count, producers,
transaction (= enqueue call) size and dequeue batch size. Our numbers are printed as ratios of its.

    python bench/outbox.py [--messages 50000] [--txn-size 2] [--engines sqlite,postgresql]

PostgreSQL: `MINICHAT_TEST_PG_URL` selects a server, otherwise a throw-away cluster is started (tests/pg.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import pg  # noqa: E402 - tests/pg.py, the throw-away PostgreSQL of the test suite
from common import log, progress  # noqa: E402 - bench/common.py, next to this file

from minichat_host.config import OutboxConfig  # noqa: E402
from minichat_host.db.engine import connect_database, dialect_name  # noqa: E402
from minichat_host.db.migrate import aupgrade  # noqa: E402
from minichat_host.outbox import Delivery, Outbox, OutboxMetrics  # noqa: E402

QUEUE = "bench.noop"


@dataclass
class Result:
    name: str
    enqueue_rate: float
    drain_rate: float
    latencies_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def produce(
    total: int,
    producers: int,
    txn_size: int,
    commit: Callable[[list[int]], Awaitable[None]],
    rate: float | None,
) -> float:
    """Commit message ids 0..total-1 in transactions of txn_size from `producers` tasks; returns seconds.

    With `rate`, transactions are paced so that all producers together commit about `rate` messages/s.
    """
    batches = [list(range(start, min(start + txn_size, total))) for start in range(0, total, txn_size)]
    interval = (producers * txn_size / rate) if rate else 0.0
    bar = progress(total, "  latency" if rate else "  enqueue")
    started = time.perf_counter()

    async def producer(index: int) -> None:
        next_at = time.perf_counter() + interval * index / producers
        for batch in batches[index::producers]:
            if interval:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                next_at += interval
            await commit(batch)
            bar.update(len(batch))

    await asyncio.gather(*(producer(i) for i in range(producers)))
    seconds = time.perf_counter() - started
    bar.close()
    return seconds


# --- minichat outbox ----------------------------------------------------------------------------------


async def bench_outbox(url: str, args: argparse.Namespace) -> Result:
    await aupgrade(url)
    database = await connect_database(url, max_size=args.producers + args.concurrency + 6)
    dialect = dialect_name(url)
    keys = [uuid.uuid4() for _ in range(64)]
    payload_pad = "x" * args.payload_bytes
    try:
        config = OutboxConfig(
            num_partitions=args.partitions,
            max_concurrent_partitions=args.concurrency,
            poll_interval_seconds=1.0,
            reconcile_interval_seconds=10.0,
            sequencer_linger_seconds=args.linger,
        )
        delivered = 0
        done = asyncio.Event()
        target = args.messages
        hook_times: dict[int, float] = {}

        async def noop(delivery: Delivery) -> None:
            nonlocal delivered
            delivered += 1
            if record_latency:
                hook_times[int(delivery.payload.split(b":", 1)[0])] = time.perf_counter()
            if delivered >= target:
                done.set()

        record_latency = False
        outbox = Outbox(database, config, dialect=dialect, metrics=OutboxMetrics(CollectorRegistry()))
        outbox.register_queue(
            QUEUE, noop, partitions=args.partitions, timeout=10.0, batch_size=args.batch_size
        )
        await outbox.ensure_queues()

        async def commit(batch: list[int]) -> None:
            async with outbox.transaction() as tx:
                for i in batch:
                    await tx.enqueue(QUEUE, keys[i % len(keys)], f"{i}:{payload_pad}".encode())

        log(f"  {dialect}: enqueue {args.messages} messages")
        seconds = await produce(args.messages, args.producers, args.txn_size, commit, None)
        enqueue_rate = args.messages / seconds
        log(f"  {dialect}: drain")
        started = time.perf_counter()
        await outbox.start()
        await asyncio.wait_for(done.wait(), timeout=args.messages / 50 + 120)
        drain_rate = args.messages / (time.perf_counter() - started)

        # Latency at a moderate rate with the scheduler running.
        delivered, target, record_latency = 0, args.latency_messages, True
        done.clear()
        commit_times: dict[int, float] = {}

        async def timed_commit(batch: list[int]) -> None:
            async with outbox.transaction() as tx:
                for i in batch:
                    await tx.enqueue(QUEUE, keys[i % len(keys)], f"{i}:{payload_pad}".encode())
            now = time.perf_counter()
            for i in batch:
                commit_times[i] = now

        log(f"  {dialect}: latency at {args.latency_rate:g} messages/s")
        await produce(args.latency_messages, args.producers, args.txn_size, timed_commit, args.latency_rate)
        await asyncio.wait_for(done.wait(), timeout=120)
        await outbox.stop()
        latencies = [(hook_times[i] - commit_times[i]) * 1000 for i in commit_times]
        return Result(f"minichat outbox ({dialect})", enqueue_rate, drain_rate, latencies)
    finally:
        await database.disconnect()


# --- pgqueuer -----------------------------------------------------------------------------------------


def ensure_pgqueuer() -> Any:
    try:
        return importlib.import_module("pgqueuer")
    except ImportError:
        log("  installing pgqueuer from PyPI into this virtualenv (bench only)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "pgqueuer"], check=True)
        importlib.invalidate_caches()
        return importlib.import_module("pgqueuer")


@contextlib.asynccontextmanager
async def pgqueuer_queries(dsn: str, pool_size: int) -> AsyncIterator[tuple[Any, Any]]:
    import asyncpg

    pgqueuer = ensure_pgqueuer()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_size)
    try:
        yield pgqueuer, pgqueuer.Queries(pgqueuer.AsyncpgPoolDriver(pool))
    finally:
        await pool.close()


async def bench_pgqueuer(url: str, args: argparse.Namespace) -> Result:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    payload_pad = "x" * args.payload_bytes
    async with pgqueuer_queries(dsn, args.producers + 2) as (pgqueuer, queries):
        await queries.install()

        async def commit(batch: list[int]) -> None:
            await queries.enqueue(
                [QUEUE] * len(batch), [f"{i}:{payload_pad}".encode() for i in batch], [0] * len(batch)
            )

        log("  pgqueuer: enqueue")
        seconds = await produce(args.messages, args.producers, args.txn_size, commit, None)
        enqueue_rate = args.messages / seconds

        async def run_consumer(target: int, hook_times: dict[int, float] | None) -> asyncpg.Connection:
            connection = await asyncpg.connect(dsn)
            manager = pgqueuer.QueueManager(pgqueuer.Queries(pgqueuer.AsyncpgDriver(connection)))
            count = 0

            @manager.entrypoint(QUEUE)
            async def noop(job: Any) -> None:
                nonlocal count
                count += 1
                if hook_times is not None:
                    hook_times[int(job.payload.split(b":", 1)[0])] = time.perf_counter()
                if count >= target:
                    manager.shutdown.set()

            await manager.run(dequeue_timeout=timedelta(seconds=1), batch_size=args.batch_size)
            return connection

        log("  pgqueuer: drain")
        started = time.perf_counter()
        connection = await run_consumer(args.messages, None)
        drain_rate = args.messages / (time.perf_counter() - started)
        await connection.close()

        log(f"  pgqueuer: latency at {args.latency_rate:g} messages/s")
        hook_times: dict[int, float] = {}
        commit_times: dict[int, float] = {}

        async def timed_commit(batch: list[int]) -> None:
            await commit(batch)
            now = time.perf_counter()
            for i in batch:
                commit_times[i] = now

        consumer = asyncio.create_task(run_consumer(args.latency_messages, hook_times))
        await asyncio.sleep(1.0)  # let it connect and start listening
        await produce(args.latency_messages, args.producers, args.txn_size, timed_commit, args.latency_rate)
        connection = await asyncio.wait_for(consumer, timeout=120)
        await connection.close()
        latencies = [(hook_times[i] - commit_times[i]) * 1000 for i in commit_times]
        return Result("pgqueuer (postgresql)", enqueue_rate, drain_rate, latencies)


# --- driver -------------------------------------------------------------------------------------------


def print_table(results: list[Result], baseline: Result | None) -> None:
    header = f"{'system':32} {'enqueue msg/s':>14} {'drain msg/s':>12} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:32} {r.enqueue_rate:14,.0f} {r.drain_rate:12,.0f} "
            f"{r.percentile(0.50):8.1f} {r.percentile(0.99):8.1f}"
        )
    if baseline is not None:
        ours = next((r for r in results if r.name == "minichat outbox (postgresql)"), None)
        if ours is not None:
            print()
            print("minichat outbox / pgqueuer on the same PostgreSQL:")
            print(f"  enqueue throughput  {ours.enqueue_rate / baseline.enqueue_rate:5.2f}x")
            print(f"  drain throughput    {ours.drain_rate / baseline.drain_rate:5.2f}x")
            latency_ratio = ours.percentile(0.99) / baseline.percentile(0.99)
            print(f"  p99 latency         {latency_ratio:5.2f}x (lower is better)")


async def run(args: argparse.Namespace) -> None:
    results: list[Result] = []
    baseline: Result | None = None
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if "sqlite" in engines:
        with tempfile.TemporaryDirectory(prefix="minichat-bench-") as directory:
            log("minichat outbox on SQLite")
            results.append(await bench_outbox(f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}", args))
    if "postgresql" in engines:
        with pg.postgres_server() as server:
            for name, bench in (
                ("minichat outbox on PostgreSQL", bench_outbox),
                ("pgqueuer", bench_pgqueuer),
            ):
                log(name)
                database = pg.new_database_name("bench")
                url = pg.create_database(server, database)
                try:
                    result = await bench(url, args)
                finally:
                    pg.drop_database(server, database)
                if bench is bench_pgqueuer:
                    baseline = result
                results.append(result)
    print()
    print(
        f"{args.messages} messages, transactions of {args.txn_size}, {args.producers} producers, "
        f"batch {args.batch_size}, {args.partitions} partitions, {args.concurrency} partition workers; "
        f"latency: {args.latency_messages} messages at {args.latency_rate:g}/s"
    )
    print_table(results, baseline)
    if baseline is not None:
        version = ensure_pgqueuer().__version__
        print(f"(pgqueuer {version}; p50/p99 = from the producer's commit to the hook call)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument(
        "--txn-size", type=int, default=2, help="messages per transaction (a turn: usage + audit)"
    )
    parser.add_argument("--producers", type=int, default=8, help="concurrent producer tasks")
    parser.add_argument(
        "--batch-size", type=int, default=10, help="delivery batch size (pgqueuer: dequeue batch)"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4, help="partition workers per process")
    parser.add_argument("--payload-bytes", type=int, default=300)
    parser.add_argument("--latency-messages", type=int, default=5_000)
    parser.add_argument("--latency-rate", type=float, default=250.0, help="messages/s for the latency run")
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="outbox.sequencer_linger_seconds (the host's default 0.05 batches commits; 0: at once)",
    )
    parser.add_argument("--engines", default="sqlite,postgresql")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
