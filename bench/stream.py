"""Stream relay overhead: minichat and the LiteLLM proxy against a client reading the provider directly.

One fake OpenAI provider (tests/fakes/openai_server.py, in its own process) streams `--tokens` text deltas
`--token-gap-ms` apart after `--ttft-ms`, each stamped with its send time. The same client (this process,
aiohttp on uvloop) then reads, one target after another:
- baseline:            the fake's `POST /v1/chat/completions` stream, directly;
- minichat-sqlite/-pg: `POST /mini-chat/v1/chats/{id}/messages:stream` on one minichat process (JWT auth,
                       quota reserve and settlement, persistence, outbox with audit and usage delivery),
                       relaying the fake through its `openai_chat` adapter, on SQLite and on PostgreSQL;
- litellm:             one LiteLLM proxy worker (`litellm[proxy]` from PyPI, installed into
                       bench/.venv-litellm on first use) relaying the same fake as an OpenAI-compatible model.
Each target runs the levels `seq` (one request at a time, idle in between) and closed loops at concurrency
1/10/100/500 (fresh chat per minichat request), after one untimed warm-up round of ten. Per request: time
to the first token, also split at the provider's send stamp on it (part 1, until the provider sent it: for
a relay its own start and the provider's delay, which a provider sharing the machine's cores stretches;
part 2, from there to the client: the relay's latency for the first chunk), total time (for minichat:
until the server closed the stream after `done`, i.e. after the finalization committed), and
per chunk `arrival - send stamp` (latency) and `|arrival gap - send gap|` (gap distortion). Then a
saturation phase: short streams (`--sat-tokens`, no delays) from `--sat-concurrency` closed-loop clients
for `--sat-seconds` → requests/s. Every figure is printed next to the baseline as `value (+added, xratio)`.

    python bench/stream.py --quick                  # a couple of minutes
    python bench/stream.py                          # the full run
    python bench/stream.py --targets baseline,minichat-sqlite --levels 10 --requests 200

PostgreSQL: `MINICHAT_TEST_PG_URL`, else a throw-away cluster (tests/pg.py). LiteLLM that cannot be installed
or started is reported as such and the run goes on without the peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # bench/common.py, next to this file
    BENCH_MODEL,
    FAKE_API_KEY,
    PREFIX,
    PROVIDER_MODEL,
    STAMP,
    Dist,
    PeerUnavailable,
    Service,
    cleanup_dir,
    create_chats,
    fmt_added,
    fmt_ms,
    log,
    mint_token,
    new_log_dir,
    postgres_database,
    progress,
    raise_open_file_limit,
    run_on_fast_loop,
    save_results,
    start_fake,
    start_litellm,
    start_minichat,
    table,
    user_id,
)

ALL_TARGETS = ("baseline", "minichat-sqlite", "minichat-postgresql", "litellm")
SEQ_PAUSE_SECONDS = 0.05
RAMP_SECONDS_PER_CLIENT = 0.002  # closed-loop clients start spread out (a connect storm is not the topic)
# Every target streams one untimed round first (ten concurrent requests), so that no level pays for a
# cold server (statements compiled on first use, pools filling, the first connections): without it the
# first level measured, whichever it is, carried the first turns' ~15 ms steps in its tail.
WARMUP_CLIENTS = 10
REQUEST_TIMEOUT_SECONDS = 300.0


# --- one streamed request -----------------------------------------------------------------------------


PER_REQUEST_METRICS = frozenset({"ttft_ms", "first_sent_ms", "first_relay_ms", "total_ms"})


@dataclass
class Sample:
    ok: bool
    error: str = ""
    ttft_ms: float = math.nan
    # The time to first token in two parts, split at the provider's send stamp on the first token.
    first_sent_ms: float = math.nan
    first_relay_ms: float = math.nan
    total_ms: float = math.nan
    tokens: int = 0
    chunk_ms: list[float] = field(default_factory=list)
    gap_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Call:
    url: str
    headers: dict[str, str]
    body: bytes
    terminal: bytes  # the bytes that mark a complete stream


async def read_stream(session: aiohttp.ClientSession, call: Call, expect_tokens: int) -> Sample:
    started = time.monotonic_ns()
    first: int | None = None
    first_stamp = 0
    previous: tuple[int, int] | None = None  # (arrival, stamp) of the previous token
    chunk_ms: list[float] = []
    gap_ms: list[float] = []
    pending = b""
    tail = b""
    terminal_seen = False
    try:
        async with session.post(call.url, headers=call.headers, data=call.body) as response:
            if response.status != 200:
                text = (await response.text())[:200]
                return Sample(ok=False, error=f"HTTP {response.status}: {text}")
            async for data in response.content.iter_any():
                arrival = time.monotonic_ns()
                if not terminal_seen and call.terminal in tail + data:
                    terminal_seen = True
                tail = data[-32:]
                pending += data
                end = 0
                for match in STAMP.finditer(pending):
                    if match.end() == len(pending):
                        break  # the digits may go on in the next chunk
                    stamp = int(match.group(1))
                    end = match.end()
                    if first is None:
                        first, first_stamp = arrival, stamp
                    chunk_ms.append((arrival - stamp) / 1e6)
                    if previous is not None:
                        gap_ms.append(abs((arrival - previous[0]) - (stamp - previous[1])) / 1e6)
                    previous = (arrival, stamp)
                pending = pending[end:] if end else pending[-48:]
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return Sample(ok=False, error=f"{type(exc).__name__}: {exc}"[:200])
    finished = time.monotonic_ns()
    sample = Sample(
        ok=True,
        ttft_ms=(first - started) / 1e6 if first is not None else math.nan,
        first_sent_ms=(first_stamp - started) / 1e6 if first is not None else math.nan,
        first_relay_ms=(first - first_stamp) / 1e6 if first is not None else math.nan,
        total_ms=(finished - started) / 1e6,
        tokens=len(chunk_ms),
        chunk_ms=chunk_ms,
        gap_ms=gap_ms,
    )
    if len(chunk_ms) != expect_tokens or not terminal_seen:
        sample.ok = False
        sample.error = f"incomplete stream: {len(chunk_ms)}/{expect_tokens} tokens, terminal={terminal_seen}"
    return sample


# --- targets ------------------------------------------------------------------------------------------


class Target:
    """Makes the request of client `slot`'s `n`-th call; `prepare` runs (untimed) before each level."""

    name: str

    async def prepare(self, clients: int, per_client: int) -> None:
        """Nothing to set up by default."""

    def call(self, slot: int, n: int) -> Call:
        raise NotImplementedError


def _openai_body(model: str) -> bytes:
    return msgspec.json.encode(
        {
            "model": model,
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


class OpenAITarget(Target):
    """A Chat Completions stream: the fake itself (baseline) or the LiteLLM proxy."""

    def __init__(self, name: str, base_url: str, api_key: str, model: str) -> None:
        self.name = name
        self._url = f"{base_url}/v1/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._body = _openai_body(model)

    def call(self, slot: int, n: int) -> Call:
        return Call(self._url, self._headers, self._body, b"[DONE]")


class MinichatTarget(Target):
    """messages:stream on a fresh chat per request (`reuse_chats`: one chat per client, turn after turn)."""

    def __init__(self, name: str, base_url: str, *, reuse_chats: bool = False) -> None:
        self.name = name
        self.base_url = base_url
        self._reuse = reuse_chats
        self._tokens: list[str] = []
        self._chats: list[list[str]] = []
        self._body = msgspec.json.encode({"content": "Tell me a story."})

    async def prepare(self, clients: int, per_client: int) -> None:
        users = [user_id(slot) for slot in range(clients)]
        self._tokens = [mint_token(user) for user in users]
        by_user = await create_chats(self.base_url, users, 1 if self._reuse else per_client)
        self._chats = [by_user[user] for user in users]

    def call(self, slot: int, n: int) -> Call:
        chats = self._chats[slot]
        chat = chats[0] if self._reuse else chats[n]
        return Call(
            f"{self.base_url}{PREFIX}/v1/chats/{chat}/messages:stream",
            {"Authorization": f"Bearer {self._tokens[slot]}", "Content-Type": "application/json"},
            self._body,
            b"event: done",
        )


# --- load ---------------------------------------------------------------------------------------------


@dataclass
class LevelResult:
    level: str
    samples: list[Sample]
    seconds: float

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def errors(self) -> int:
        return len(self.samples) - len(self.ok)

    def dist(self, metric: str) -> Dist:
        if metric in PER_REQUEST_METRICS:
            return Dist.of([getattr(s, metric) for s in self.ok])
        return Dist.of([value for s in self.ok for value in getattr(s, metric)])

    @property
    def rps(self) -> float:
        return len(self.ok) / self.seconds if self.seconds > 0 else math.nan

    def first_errors(self) -> list[str]:
        return sorted({s.error for s in self.samples if not s.ok})[:3]


@contextlib.asynccontextmanager
async def client_session(limit: int) -> AsyncIterator[aiohttp.ClientSession]:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


async def run_level(target: Target, level: str, requests: int, tokens: int) -> LevelResult:
    """`seq`: one at a time with a pause; a number: that many closed-loop clients share `requests`."""
    clients = 1 if level == "seq" else int(level)
    per_client = math.ceil(requests / clients)
    await target.prepare(clients, per_client)
    samples: list[Sample] = []
    async with client_session(clients) as session:
        bar = progress(clients * per_client, f"  level {level}")
        started = time.monotonic()

        async def client(slot: int) -> None:
            await asyncio.sleep(slot * RAMP_SECONDS_PER_CLIENT)
            for n in range(per_client):
                samples.append(await read_stream(session, target.call(slot, n), tokens))
                bar.update()
                if level == "seq":
                    await asyncio.sleep(SEQ_PAUSE_SECONDS)

        await asyncio.gather(*(client(slot) for slot in range(clients)))
        seconds = time.monotonic() - started
        bar.close()
    return LevelResult(level, samples, seconds)


async def run_saturation(target: Target, clients: int, seconds: float, tokens: int) -> LevelResult:
    """Closed-loop clients for `seconds`; requests that finish in the window count."""
    await target.prepare(clients, 1)
    samples: list[Sample] = []
    async with client_session(clients) as session:
        # Warm up (connections, caches) before the window opens.
        await asyncio.gather(*(read_stream(session, target.call(slot, 0), tokens) for slot in range(clients)))
        deadline = time.monotonic() + seconds
        started = time.monotonic()

        async def client(slot: int) -> None:
            while time.monotonic() < deadline:
                samples.append(await read_stream(session, target.call(slot, 0), tokens))

        await asyncio.gather(*(client(slot) for slot in range(clients)))
        elapsed = time.monotonic() - started
    return LevelResult("saturation", samples, elapsed)


# --- the run ------------------------------------------------------------------------------------------


@dataclass
class TargetResult:
    name: str
    levels: dict[str, LevelResult] = field(default_factory=dict)
    saturation: LevelResult | None = None
    unavailable: str = ""


def level_requests(args: argparse.Namespace, level: str) -> int:
    if args.requests:
        return int(args.requests)
    clients = 1 if level == "seq" else int(level)
    if args.quick:
        return {"seq": 5, "1": 5}.get(level, max(clients, 3 * clients if clients <= 10 else clients))
    return {"seq": 30, "1": 30}.get(level, max(2 * clients, 20 * clients if clients <= 10 else 2 * clients))


async def measure_target(
    name: str,
    target: Target,
    sat_target: Target | None,
    args: argparse.Namespace,
    result: TargetResult,
) -> None:
    log(f"  {name}: warm-up, {WARMUP_CLIENTS} concurrent requests (not measured)")
    await run_level(target, str(WARMUP_CLIENTS), WARMUP_CLIENTS, args.tokens)
    for level in args.levels:
        requests = level_requests(args, level)
        log(f"  {name}: level {level}, {requests} requests")
        outcome = await run_level(target, level, requests, args.tokens)
        result.levels[level] = outcome
        log(
            f"    ttft p50 {fmt_ms(outcome.dist('ttft_ms').p50)} ms, chunk p99 "
            f"{fmt_ms(outcome.dist('chunk_ms').p99)} ms, {outcome.rps:.1f} req/s, errors {outcome.errors}"
            + (f" {outcome.first_errors()}" if outcome.errors else "")
        )
    if sat_target is not None and args.sat_seconds > 0:
        log(f"  {name}: saturation, {args.sat_concurrency} clients x {args.sat_seconds:.0f} s")
        result.saturation = await run_saturation(
            sat_target, args.sat_concurrency, args.sat_seconds, args.sat_tokens
        )
        log(f"    {result.saturation.rps:.1f} req/s, errors {result.saturation.errors}")


async def run(args: argparse.Namespace) -> dict[str, TargetResult]:
    raise_open_file_limit()
    log_dir = new_log_dir("stream")
    results: dict[str, TargetResult] = {}
    services: list[Service] = []
    try:
        fake = await start_fake(
            log_dir, ttft_ms=args.ttft_ms, token_gap_ms=args.token_gap_ms, tokens=args.tokens
        )
        services.append(fake)
        sat_fake = await start_fake(
            log_dir, ttft_ms=0, token_gap_ms=0, tokens=args.sat_tokens, name="fake-sat"
        )
        services.append(sat_fake)
        log(f"fake provider at {fake.url} (saturation fake at {sat_fake.url}); logs in {log_dir}")
        for name in args.targets:
            result = results[name] = TargetResult(name)
            log(f"target {name}")
            try:
                async with target_pair(name, log_dir, fake.url, sat_fake.url, args) as (target, sat_target):
                    await measure_target(name, target, sat_target, args, result)
            except PeerUnavailable as exc:
                result.unavailable = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log(f"  LiteLLM proxy unavailable, reporting minichat against the baseline only: {exc}")
    finally:
        for service in services:
            service.stop()
        cleanup_dir(log_dir, args.keep)
    return results


@contextlib.asynccontextmanager
async def target_pair(
    name: str, log_dir: Path, fake_url: str, sat_fake_url: str, args: argparse.Namespace
) -> AsyncIterator[tuple[Target, Target]]:
    """The target for the latency levels and the one for saturation (same server, the short-stream fake)."""
    if name == "baseline":
        yield (
            OpenAITarget(name, fake_url, FAKE_API_KEY, PROVIDER_MODEL),
            OpenAITarget(name, sat_fake_url, FAKE_API_KEY, PROVIDER_MODEL),
        )
        return
    if name == "litellm":
        peer = await start_litellm(log_dir, fake_url, install=not args.no_install)
        peer_sat = None
        try:
            key = peer.extra["master_key"]
            peer_sat = await start_litellm(log_dir, sat_fake_url, install=False, name="litellm-sat")
            yield (
                OpenAITarget(name, peer.url, key, BENCH_MODEL),
                OpenAITarget(name, peer_sat.url, peer_sat.extra["master_key"], BENCH_MODEL),
            )
        finally:
            peer.stop()
            if peer_sat is not None:
                peer_sat.stop()
        return
    engine = name.split("-", 1)[1]
    with contextlib.ExitStack() as stack:
        if engine == "sqlite":
            url, sat_url = (f"sqlite+aiosqlite:///{log_dir / f'{n}.db'}" for n in ("stream", "sat"))
        else:
            url = stack.enter_context(postgres_database("bench_stream"))
            sat_url = stack.enter_context(postgres_database("bench_stream_sat"))
        server = await start_minichat(log_dir, url, fake_url, name=name)
        sat_server = None
        try:
            sat_server = await start_minichat(log_dir, sat_url, sat_fake_url, name=f"{name}-sat")
            yield (
                MinichatTarget(name, server.url),
                MinichatTarget(name, sat_server.url, reuse_chats=True),
            )
        finally:
            server.stop()
            if sat_server is not None:
                sat_server.stop()


# --- report -------------------------------------------------------------------------------------------

METRICS = (
    ("ttft_ms", "time to first token (ms)"),
    ("first_sent_ms", "time to first token, part 1: until the provider sent it (ms)"),
    ("first_relay_ms", "time to first token, part 2: from the provider's send to the client (ms)"),
    ("total_ms", "total time (ms)"),
    ("chunk_ms", "per-chunk latency: arrival - provider send (ms)"),
    ("gap_ms", "inter-token gap distortion |arrival gap - send gap| (ms)"),
)


def report(results: dict[str, TargetResult], args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    base = results.get("baseline")
    names = [n for n, r in results.items() if not r.unavailable]
    others = [n for n in names if n != "baseline"]
    lines.append(
        f"Stream relay: {args.tokens} tokens, {args.token_gap_ms:g} ms apart, first after "
        f"{args.ttft_ms:g} ms; cells are value (+added over baseline, xratio)"
    )
    for name, result in results.items():
        if result.unavailable:
            lines.append(f"NOTE: {name} unavailable here: {result.unavailable}")
    for metric, title in METRICS:
        rows: list[list[str]] = []
        for level in args.levels:
            for pct in ("p50", "p95", "p99"):
                base_value = (
                    base.levels[level].dist(metric).get(pct) if base and level in base.levels else math.nan
                )
                row = [level, pct, fmt_ms(base_value)]
                for name in others:
                    level_result = results[name].levels.get(level)
                    value = level_result.dist(metric).get(pct) if level_result else math.nan
                    row.append(fmt_added(value, base_value))
                rows.append(row)
        lines += ["", f"== {title} ==", table(["level", "pct", "baseline", *others], rows)]
    rows = []
    for level in args.levels:
        row = [level]
        for name in names:
            level_result = results[name].levels.get(level)
            row.append(f"{level_result.rps:.1f} / {level_result.errors}" if level_result else "-")
        rows.append(row)
    lines += ["", "== requests/s / errors per level ==", table(["level", *names], rows)]
    if base and base.saturation:
        base_rps = base.saturation.rps
        row = [f"{args.sat_concurrency} clients, {args.sat_tokens} tokens", f"{base_rps:.1f}"]
        for name in others:
            sat = results[name].saturation
            row.append(f"{sat.rps:.1f} (x{sat.rps / base_rps:.2f}, errors {sat.errors})" if sat else "-")
        lines += ["", "== requests/s at saturation ==", table(["load", "baseline", *others], [row])]
    lines += ["", "== targets ==", *check_targets(results)]
    data = {
        "args": vars(args),
        "results": {
            name: {
                "unavailable": r.unavailable,
                "levels": {
                    level: {
                        "requests": len(lr.samples),
                        "errors": lr.errors,
                        "error_examples": lr.first_errors(),
                        "rps": lr.rps,
                        **{m: vars(lr.dist(m)) for m, _ in METRICS},
                    }
                    for level, lr in r.levels.items()
                },
                "saturation_rps": r.saturation.rps if r.saturation else None,
                "saturation_errors": r.saturation.errors if r.saturation else None,
            }
            for name, r in results.items()
        },
    }
    return "\n".join(lines), data


def _added(results: dict[str, TargetResult], name: str, level: str, metric: str, pct: str) -> float:
    base, target = results.get("baseline"), results.get(name)
    if not base or not target or level not in base.levels or level not in target.levels:
        return math.nan
    return target.levels[level].dist(metric).get(pct) - base.levels[level].dist(metric).get(pct)


def check_targets(results: dict[str, TargetResult]) -> list[str]:
    out: list[str] = []

    def verdict(label: str, value: float, limit: float, unit: str = "ms") -> None:
        if math.isnan(value):
            out.append(f"  [n/a ] {label}: not measured")
        elif value <= limit:
            out.append(f"  [PASS] {label}: {value:.2f} {unit} <= {limit:g} {unit}")
        else:
            out.append(
                f"  [MISS] {label}: {value:.2f} {unit} > {limit:g} {unit} (over by {value - limit:.2f})"
            )

    verdict("added TTFT p50, c=10, SQLite", _added(results, "minichat-sqlite", "10", "ttft_ms", "p50"), 3)
    verdict("added TTFT p99, c=10, SQLite", _added(results, "minichat-sqlite", "10", "ttft_ms", "p99"), 15)
    for name in ("minichat-sqlite", "minichat-postgresql"):
        if name in results:
            for level in ("1", "10"):
                verdict(
                    f"added per-chunk p99, c={level}, {name}",
                    _added(results, name, level, "chunk_ms", "p99"),
                    1,
                )
            c500 = results[name].levels.get("500")
            if c500 is not None:
                verdict(f"errors at 500 concurrent streams, {name}", float(c500.errors), 0, "errors")
    peer = results.get("litellm")
    if peer and not peer.unavailable:
        for name in ("minichat-sqlite", "minichat-postgresql"):
            if name not in results:
                continue
            for level in peer.levels:
                for pct in ("p50", "p99"):
                    ours = _added(results, name, level, "ttft_ms", pct)
                    theirs = _added(results, "litellm", level, "ttft_ms", pct)
                    if math.isnan(ours) or math.isnan(theirs):
                        continue
                    mark = "PASS" if ours < theirs else "MISS"
                    out.append(
                        f"  [{mark}] added TTFT {pct} at {level}: {name} {ours:+.2f} ms "
                        f"vs litellm {theirs:+.2f} ms"
                    )
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few requests per level (a couple of minutes)")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--token-gap-ms", type=float, default=5.0)
    parser.add_argument("--levels", default="seq,1,10,100,500", help="comma list: seq and/or client counts")
    parser.add_argument("--requests", type=int, default=0, help="requests per level (default: by level)")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS))
    parser.add_argument("--sat-concurrency", type=int, default=32)
    parser.add_argument("--sat-tokens", type=int, default=20)
    parser.add_argument("--sat-seconds", type=float, default=0.0, help="default: 8 (quick) / 20")
    parser.add_argument("--no-install", action="store_true", help="do not pip-install litellm[proxy]")
    parser.add_argument("--keep", action="store_true", help="keep server logs and databases")
    args = parser.parse_args(argv)
    args.levels = [level.strip() for level in args.levels.split(",") if level.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(ALL_TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {ALL_TARGETS}")
    if "baseline" not in args.targets:
        args.targets.insert(0, "baseline")
    if not args.sat_seconds:
        args.sat_seconds = 8.0 if args.quick else 20.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = run_on_fast_loop(run(args))
    text, data = report(results, args)
    print(text)
    path = save_results("stream", data)
    log(f"results saved to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
