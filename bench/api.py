"""Hot JSON endpoints: requests/s and latency percentiles at concurrency 64 against a populated database.

The database (SQLite file, or PostgreSQL with `--engines sqlite,postgresql`) is migrated and filled
directly with SQL: `--chats` chats (10k) spread over `--users` users, `--messages-per-chat` messages each
(10 → 100k messages: user/assistant pairs, each pair a completed turn) and the quota rows of the current
day and month for every user. One minichat process (`python -m minichat_host serve`, JWT auth, bundled
plugins) serves it; the load comes from `wrk` in its own process (Debian package `wrk`, installed with
apt-get when missing), `--connections` (64) connections on one thread, each request picking a random
(user token, path) pair from a prepared list of 2,000 so that caches of one row do not flatter the result.

Endpoints: `GET /v1/chats` (first page), `GET /v1/chats/{id}/messages` (first page),
`GET /v1/chats/{id}/turns/{request_id}`, `GET /v1/quota/status`. The baseline, measured the same way in
the same process, is `GET /healthz` (aiohttp with the middleware chain, no auth, no database): each
endpoint's throughput is printed as a ratio of it.

    python bench/api.py [--duration 10] [--engines sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # bench/common.py, next to this file
    BENCH_MODEL,
    PREFIX,
    TENANT_ID,
    cleanup_dir,
    log,
    mint_token,
    new_log_dir,
    postgres_database,
    progress,
    raise_open_file_limit,
    save_results,
    start_minichat,
    table,
    user_id,
)

from minichat_host.db import tables
from minichat_host.db.engine import create_async_sa_engine
from minichat_host.db.migrate import aupgrade

PAIRS_PER_SCRIPT = 2000
BATCH = 5000
TARGET_RPS = 2000.0
TARGET_P99_MS = 25.0


# --- data ---------------------------------------------------------------------------------------------


@dataclass
class Population:
    """What the load picks from: (user, chat) and (user, chat, request_id) triples."""

    chats: list[tuple[str, str]]
    turns: list[tuple[str, str, str]]


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), BATCH):
        yield rows[start : start + BATCH]


async def populate(url: str, users: int, chats: int, messages_per_chat: int) -> Population:
    """Insert the data set with SQL (executemany in batches); returns what the load generator uses."""
    await aupgrade(url)
    engine = create_async_sa_engine(url)
    tenant = uuid.UUID(TENANT_ID)
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(days=30)
    population = Population(chats=[], turns=[])
    chat_rows: list[dict[str, Any]] = []
    message_rows: list[dict[str, Any]] = []
    turn_rows: list[dict[str, Any]] = []
    for index in range(chats):
        owner = uuid.UUID(user_id(index % users))
        chat_id = uuid.uuid4()
        created = start + dt.timedelta(seconds=index * 60)
        chat_rows.append(
            {
                "id": chat_id,
                "tenant_id": tenant,
                "user_id": owner,
                "model": BENCH_MODEL,
                "title": f"Chat {index}",
                "is_temporary": False,
                "created_at": created,
                "updated_at": created + dt.timedelta(seconds=messages_per_chat),
            }
        )
        population.chats.append((str(owner), str(chat_id)))
        for pair in range(messages_per_chat // 2):
            request_id = uuid.uuid4()
            user_message, assistant_message = uuid.uuid4(), uuid.uuid4()
            at = created + dt.timedelta(seconds=2 * pair)
            common = {"tenant_id": tenant, "chat_id": chat_id, "request_id": request_id}
            message_rows.append(
                {
                    **common,
                    "id": user_message,
                    "role": "user",
                    "content": f"Question {pair} about something rather specific, in a sentence or two.",
                    "token_estimate": 20,
                    "created_at": at,
                }
            )
            message_rows.append(
                {
                    **common,
                    "id": assistant_message,
                    "role": "assistant",
                    "content": "An answer of a typical length. " * 12,
                    "token_estimate": 90,
                    "input_tokens": 120,
                    "output_tokens": 90,
                    "model": BENCH_MODEL,
                    "created_at": at + dt.timedelta(seconds=1),
                }
            )
            turn_rows.append(
                {
                    **common,
                    "id": uuid.uuid4(),
                    "requester_type": "user",
                    "requester_user_id": owner,
                    "state": "completed",
                    "assistant_message_id": assistant_message,
                    "effective_model": BENCH_MODEL,
                    "quota_decision": "allow",
                    "started_at": at,
                    "completed_at": at + dt.timedelta(seconds=1),
                    "updated_at": at + dt.timedelta(seconds=1),
                }
            )
            population.turns.append((str(owner), str(chat_id), str(request_id)))
    quota_rows: list[dict[str, Any]] = []
    today = now.date()
    for index in range(users):
        for period_type, period_start in (("daily", today), ("monthly", today.replace(day=1))):
            for bucket in ("total", "tier:premium"):
                quota_rows.append(
                    {
                        "id": uuid.uuid4(),
                        "tenant_id": tenant,
                        "user_id": uuid.UUID(user_id(index)),
                        "period_type": period_type,
                        "period_start": period_start,
                        "bucket": bucket,
                        "spent_credits_micro": 1_000_000,
                        "calls": 10,
                        "updated_at": now,
                    }
                )
    bar = progress(len(chat_rows) + len(message_rows) + len(turn_rows) + len(quota_rows), "  insert rows")
    try:
        async with engine.begin() as connection:
            for table_, rows in (
                (tables.chats, chat_rows),
                (tables.messages, message_rows),
                (tables.chat_turns, turn_rows),
                (tables.quota_usage, quota_rows),
            ):
                for batch in _chunks(rows):
                    await connection.execute(table_.insert(), batch)
                    bar.update(len(batch))
    finally:
        bar.close()
        await engine.dispose()
    return population


# --- wrk ----------------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk not found: installing the Debian package (apt-get install wrk)")
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is required (apt-get install wrk) and could not be installed")
    return found


def lua_script(pairs: Sequence[tuple[str, str | None]], *, think_ms: tuple[int, int] | None = None) -> str:
    """A wrk script that sends each request with a random (path, bearer token) pair from `pairs`; with
    `think_ms`, each connection waits a uniform random lo..hi ms after a response before its next request."""

    def entry(path: str, token: str | None) -> str:
        header = f'"Bearer {token}"' if token else "nil"
        return f'  {{"{path}", {header}}}'

    entries = ",\n".join(entry(path, token) for path, token in pairs)
    return (
        "local pairs = {\n" + entries + "\n}\n"
        "math.randomseed(7)\n"
        "request = function()\n"
        "  local pick = pairs[math.random(#pairs)]\n"
        "  local headers = {}\n"
        '  if pick[2] then headers["Authorization"] = pick[2] end\n'
        '  return wrk.format("GET", pick[1], headers)\n'
        "end\n"
        + (f"delay = function() return math.random({think_ms[0]}, {think_ms[1]}) end\n" if think_ms else "")
    )


def think_time(connections: int, rate: float) -> tuple[int, int]:
    """The lo..hi think time (ms) that makes `connections` closed-loop connections offer at least about
    `rate` requests/s while a response takes up to ~4 ms: mean = connections / rate - 4 ms, spread ±50%."""
    mean = max(2.0, 1000.0 * connections / rate - 4.0)
    return round(mean * 0.5), round(mean * 1.5)


@dataclass
class WrkResult:
    endpoint: str
    mode: str  # "saturation" (back-to-back requests) or "paced" (think time between requests)
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: str
    requests: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    wrk: str,
    base_url: str,
    name: str,
    script: Path,
    connections: int,
    seconds: float,
    mode: str = "saturation",
) -> WrkResult:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), base_url]
    output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:(.*)", output)
    total = re.search(r"(\d+) requests in", output)
    return WrkResult(
        endpoint=name,
        mode=mode,
        rps=rps,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1).strip() if errors else "",
        requests=int(total.group(1)) if total else 0,
    )


def endpoint_pairs(population: Population, rng: random.Random) -> dict[str, list[tuple[str, str | None]]]:
    tokens: dict[str, str] = {}

    def token(user: str) -> str:
        if user not in tokens:
            tokens[user] = mint_token(user)
        return tokens[user]

    chats = [rng.choice(population.chats) for _ in range(PAIRS_PER_SCRIPT)]
    turns = [rng.choice(population.turns) for _ in range(PAIRS_PER_SCRIPT)]
    base = f"{PREFIX}/v1"
    return {
        "healthz (baseline)": [("/healthz", None)],
        "list chats": [(f"{base}/chats", token(user)) for user, _ in chats],
        "list messages": [(f"{base}/chats/{chat}/messages", token(user)) for user, chat in chats],
        "get turn": [(f"{base}/chats/{chat}/turns/{request}", token(user)) for user, chat, request in turns],
        "quota status": [(f"{base}/quota/status", token(user)) for user, _ in chats],
    }


# --- the run ------------------------------------------------------------------------------------------


async def bench_engine(engine: str, url: str, args: argparse.Namespace, log_dir: Path) -> list[WrkResult]:
    log(f"{engine}: populating {args.chats} chats, {args.chats * args.messages_per_chat} messages")
    started = time.monotonic()
    population = await populate(url, args.users, args.chats, args.messages_per_chat)
    log(f"  populated in {time.monotonic() - started:.1f} s")
    # The data path of the fake provider is never used here (no streaming).
    server = await start_minichat(log_dir, url, "http://127.0.0.1:9", name=f"minichat-{engine}")
    wrk = ensure_wrk()
    results: list[WrkResult] = []
    try:
        rng = random.Random(7)
        endpoints = endpoint_pairs(population, rng)
        bar = progress(len(endpoints), f"  {engine} endpoints")
        for name, pairs in endpoints.items():
            slug = re.sub(r"\W+", "_", name)
            script = log_dir / f"{engine}-{slug}.lua"
            script.write_text(lua_script(pairs), encoding="utf-8")
            # A short warm-up (connections, first-use imports), then the measured run.
            run_wrk(wrk, server.url, name, script, args.connections, 2)
            measured = [run_wrk(wrk, server.url, name, script, args.connections, args.duration)]
            if args.paced_rps > 0 and not name.startswith("healthz"):
                paced = log_dir / f"{engine}-{slug}-paced.lua"
                think = think_time(args.connections, args.paced_rps)
                paced.write_text(lua_script(pairs, think_ms=think), encoding="utf-8")
                measured.append(
                    run_wrk(wrk, server.url, name, paced, args.connections, args.duration, mode="paced")
                )
            for result in measured:
                results.append(result)
                errors = f", socket errors {result.socket_errors}" if result.socket_errors else ""
                log(
                    f"  {name} ({result.mode}): {result.rps:.0f} req/s, p50 {result.p50_ms:.2f} ms, "
                    f"p99 {result.p99_ms:.2f} ms, non-2xx {result.non_2xx}{errors}"
                )
            bar.update()
        bar.close()
    finally:
        server.stop()
    return results


async def run(args: argparse.Namespace) -> dict[str, list[WrkResult]]:
    raise_open_file_limit()
    log_dir = new_log_dir("api")
    results: dict[str, list[WrkResult]] = {}
    try:
        for engine in args.engines:
            with contextlib.ExitStack() as stack:
                if engine == "sqlite":
                    url = f"sqlite+aiosqlite:///{log_dir / 'api.db'}"
                else:
                    url = stack.enter_context(postgres_database("bench_api"))
                results[engine] = await bench_engine(engine, url, args, log_dir)
    finally:
        cleanup_dir(log_dir, args.keep)
    return results


def report(results: dict[str, list[WrkResult]], args: argparse.Namespace) -> str:
    lines = [
        f"Hot JSON endpoints: {args.connections} connections (wrk, 1 thread), {args.duration:g} s each, "
        f"{args.chats} chats / {args.chats * args.messages_per_chat} messages / {args.users} users",
        "saturation: each connection sends its next request as soon as the response is in (throughput;",
        f"  latency is then ~{args.connections} / throughput by queueing alone). paced: each connection",
        f"  waits a random think time between requests, offering ~{args.paced_rps:g} req/s (latency there).",
    ]
    for engine, rows in results.items():
        base = rows[0].rps if rows else float("nan")
        body = [
            [
                r.endpoint,
                r.mode,
                f"{r.rps:.0f}",
                f"x{r.rps / base:.2f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                str(r.non_2xx),
                r.socket_errors or "-",
            ]
            for r in rows
        ]
        lines += [
            "",
            f"== {engine} ==",
            table(
                ["endpoint", "mode", "req/s", "vs healthz", "p50 ms", "p99 ms", "non-2xx", "socket errors"],
                body,
            ),
        ]
        for r in rows[1:]:
            misses = []
            if r.mode == "saturation" and r.rps < TARGET_RPS:
                misses.append(f"{r.rps:.0f} req/s is {TARGET_RPS - r.rps:.0f} short of {TARGET_RPS:.0f}")
            if r.mode == "paced" and r.rps < 0.95 * args.paced_rps:
                misses.append(f"the paced run reached only {r.rps:.0f} req/s")
            if r.p99_ms > TARGET_P99_MS:
                misses.append(
                    f"p99 {r.p99_ms:.1f} ms is {r.p99_ms - TARGET_P99_MS:.1f} ms over {TARGET_P99_MS:g}"
                )
            if r.non_2xx:
                misses.append(f"{r.non_2xx} non-2xx responses")
            verdict = "PASS" if not misses else "MISS"
            lines.append(
                f"  [{verdict}] {engine} {r.endpoint} ({r.mode})"
                + (": " + "; ".join(misses) if misses else "")
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--chats", type=int, default=10_000)
    parser.add_argument("--messages-per-chat", type=int, default=10)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--engines", default="sqlite", help="comma list: sqlite,postgresql")
    parser.add_argument(
        "--paced-rps", type=float, default=TARGET_RPS, help="offered load of the paced runs (0: none)"
    )
    parser.add_argument("--quick", action="store_true", help="5 s per endpoint")
    parser.add_argument("--keep", action="store_true", help="keep server logs and the database")
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if args.quick:
        args.duration = min(args.duration, 5.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    print(report(results, args))
    path = save_results(
        "api", {"args": vars(args), "results": {e: [vars(r) for r in rs] for e, rs in results.items()}}
    )
    log(f"results saved to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
