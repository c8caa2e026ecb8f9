"""Memory per idle open stream: RSS of one server process holding N streams that wait on the provider.

A fake OpenAI provider (its own process) answers every generation with the stream headers and the first
(role) chunk, then goes silent for `--stall-seconds`. One minichat process (SQLite, JWT auth, bundled
plugins) relays it; this process opens `--streams` (1,000) `messages:stream` requests, one fresh chat
each, and waits until every one has received `stream_started`, i.e. the turn is written, the provider call
is open and the SSE response is live. The server's RSS (VmRSS from /proc) is read before (after a warm-up of
a few complete turns, so lazy imports and caches are paid for) and after each step of `--steps`; the
per-stream cost is the slope. The LiteLLM proxy (the peer) is measured the same way holding the same
number of idle streams, when it is installed (bench/.venv-litellm, see bench/stream.py).

The open-file limit is raised (`resource.setrlimit`) in this process before the servers start, so they
inherit it: every open stream costs the server two sockets (client and provider).

    python bench/memory.py [--streams 1000] [--steps 250,500,1000] [--no-peer]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # bench/common.py, next to this file
    BENCH_MODEL,
    PREFIX,
    PeerUnavailable,
    Service,
    cleanup_dir,
    create_chats,
    log,
    mint_token,
    new_log_dir,
    raise_open_file_limit,
    rss_kib,
    save_results,
    start_fake,
    start_litellm,
    start_minichat,
    table,
    user_id,
)

TARGET_KIB_PER_STREAM = 30.0
SETTLE_SECONDS = 2.0


@dataclass
class MemoryResult:
    name: str
    baseline_kib: int
    points: list[tuple[int, int]] = field(default_factory=list)  # (open streams, RSS KiB)
    errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    unavailable: str = ""

    def per_stream_kib(self) -> float:
        """Least-squares slope of RSS over open streams, the baseline (0 streams) included."""
        points = [(0, self.baseline_kib), *self.points]
        if len(points) < 2:
            return float("nan")
        mean_x = sum(x for x, _ in points) / len(points)
        mean_y = sum(y for _, y in points) / len(points)
        num = sum((x - mean_x) * (y - mean_y) for x, y in points)
        den = sum((x - mean_x) ** 2 for x, _ in points)
        return num / den if den else float("nan")


OpenStream = Callable[[aiohttp.ClientSession, int], Awaitable[aiohttp.ClientResponse]]


async def hold_streams(
    service: Service, open_stream: OpenStream, steps: Sequence[int], result: MemoryResult, ready_marker: bytes
) -> None:
    """Open streams up to each step, wait for each to show `ready_marker`, then read the server's RSS."""
    responses: list[aiohttp.ClientResponse] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:

        async def open_one(index: int) -> None:
            try:
                response = await open_stream(session, index)
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
                seen = b""
                while ready_marker not in seen:
                    chunk = await asyncio.wait_for(response.content.readany(), 60)
                    if not chunk:
                        raise RuntimeError("stream ended before it was ready")
                    seen += chunk
                responses.append(response)
            except Exception as exc:  # counted and reported: the run goes on
                result.errors += 1
                if len(result.error_examples) < 3:
                    result.error_examples.append(f"{type(exc).__name__}: {exc}"[:200])

        opened = 0
        for step in steps:
            semaphore = asyncio.Semaphore(50)  # open in waves: a connect storm is not what is measured

            async def paced(index: int, gate: asyncio.Semaphore = semaphore) -> None:
                async with gate:
                    await open_one(index)

            started = time.monotonic()
            await asyncio.gather(*(paced(i) for i in range(opened, step)))
            opened = step
            await asyncio.sleep(SETTLE_SECONDS)
            rss = rss_kib(service.pid)
            result.points.append((len(responses), rss))
            log(
                f"  {result.name}: {len(responses)} open streams (opened in "
                f"{time.monotonic() - started:.1f} s), RSS {rss / 1024:.1f} MiB, errors {result.errors}"
            )
        for response in responses:
            response.close()


async def measure_minichat(log_dir: Path, fake: Service, args: argparse.Namespace) -> MemoryResult:
    db_url = f"sqlite+aiosqlite:///{log_dir / 'memory.db'}"
    server = await start_minichat(log_dir, db_url, fake.url, name="minichat-memory")
    try:
        users = [user_id(i) for i in range(args.users)]
        per_user = -(-args.streams // args.users)
        by_user = await create_chats(server.url, users, per_user + 1)
        tokens = {user: mint_token(user) for user in users}
        body = msgspec.json.encode({"content": "Tell me a story."})

        def request_for(index: int) -> tuple[str, dict[str, str]]:
            user = users[index % args.users]
            chat = by_user[user][index // args.users]
            url = f"{server.url}{PREFIX}/v1/chats/{chat}/messages:stream"
            return url, {"Authorization": f"Bearer {tokens[user]}", "Content-Type": "application/json"}

        # Warm-up: a few streams opened and dropped (the turns end cancelled), so first-use costs
        # (imports, caches, pools) are paid before the baseline is read.
        async with aiohttp.ClientSession() as session:
            for i in range(3):
                url, headers = request_for(i)
                async with session.post(url, headers=headers, data=body) as response:
                    await response.content.readany()
        await asyncio.sleep(SETTLE_SECONDS)
        result = MemoryResult("minichat", baseline_kib=rss_kib(server.pid))
        log(f"  minichat: RSS before {result.baseline_kib / 1024:.1f} MiB")

        async def open_stream(session: aiohttp.ClientSession, index: int) -> aiohttp.ClientResponse:
            url, headers = request_for(index + 3)
            return await session.post(url, headers=headers, data=body)

        await hold_streams(server, open_stream, args.steps, result, b"event: stream_started")
        return result
    finally:
        server.stop()


async def measure_litellm(log_dir: Path, fake: Service, args: argparse.Namespace) -> MemoryResult:
    try:
        peer = await start_litellm(log_dir, fake.url, install=False, name="litellm-memory")
    except PeerUnavailable as exc:
        return MemoryResult("litellm", baseline_kib=0, unavailable=str(exc).splitlines()[0])
    try:
        key = peer.extra["master_key"]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        body = msgspec.json.encode(
            {
                "model": BENCH_MODEL,
                "messages": [{"role": "user", "content": "Tell me a story."}],
                "stream": True,
            }
        )
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.post(
                        f"{peer.url}/v1/chat/completions", headers=headers, data=body
                    ) as r:
                        await asyncio.wait_for(r.content.readany(), 10)
        await asyncio.sleep(SETTLE_SECONDS)
        result = MemoryResult("litellm", baseline_kib=rss_kib(peer.pid))
        log(f"  litellm: RSS before {result.baseline_kib / 1024:.1f} MiB")

        async def open_stream(session: aiohttp.ClientSession, index: int) -> aiohttp.ClientResponse:
            return await session.post(f"{peer.url}/v1/chat/completions", headers=headers, data=body)

        # LiteLLM relays the provider's first (role) chunk.
        await hold_streams(peer, open_stream, args.steps, result, b"data:")
        return result
    finally:
        peer.stop()


async def run(args: argparse.Namespace) -> list[MemoryResult]:
    limit = raise_open_file_limit(max(65536, 4 * args.streams + 1024))
    log(f"open-file limit {limit}")
    log_dir = new_log_dir("memory")
    results: list[MemoryResult] = []
    fake = await start_fake(
        log_dir, ttft_ms=0, token_gap_ms=0, tokens=5, stamp=False, stall_after_start=args.stall_seconds
    )
    try:
        log("minichat")
        results.append(await measure_minichat(log_dir, fake, args))
        if not args.no_peer:
            log("litellm")
            results.append(await measure_litellm(log_dir, fake, args))
    finally:
        fake.stop()
        cleanup_dir(log_dir, args.keep)
    return results


def report(results: list[MemoryResult], args: argparse.Namespace) -> str:
    lines = ["Idle open streams: the provider stalls after the stream started; RSS of the relaying process"]
    rows = []
    for r in results:
        if r.unavailable:
            lines.append(f"NOTE: {r.name} unavailable here: {r.unavailable}")
            continue
        last_streams, last_rss = r.points[-1] if r.points else (0, r.baseline_kib)
        rows.append(
            [
                r.name,
                f"{r.baseline_kib / 1024:.1f}",
                " ".join(f"{n}:{rss / 1024:.1f}" for n, rss in r.points),
                f"{r.per_stream_kib():.1f}",
                f"{(last_rss - r.baseline_kib) / max(last_streams, 1):.1f}",
                str(r.errors) + (f" {r.error_examples}" if r.errors else ""),
            ]
        )
    lines.append(
        table(
            ["server", "RSS idle MiB", "streams:RSS MiB", "KiB/stream (slope)", "KiB/stream (end)", "errors"],
            rows,
        )
    )
    ours = next((r for r in results if r.name == "minichat" and not r.unavailable), None)
    if ours is not None:
        slope = ours.per_stream_kib()
        verdict = "PASS" if slope <= TARGET_KIB_PER_STREAM and not ours.errors else "MISS"
        detail = f"{slope:.1f} KiB per idle stream (target <= {TARGET_KIB_PER_STREAM:g})"
        if slope > TARGET_KIB_PER_STREAM:
            detail += f", over by {slope - TARGET_KIB_PER_STREAM:.1f}"
        lines.append(f"  [{verdict}] minichat: {detail}, errors {ours.errors}")
        peer = next((r for r in results if r.name == "litellm" and not r.unavailable), None)
        if peer is not None and peer.points:
            lines.append(f"  minichat / litellm per-stream ratio: x{slope / peer.per_stream_kib():.2f}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--steps", default="", help="comma list of open-stream counts (default: quarters)")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--stall-seconds", type=float, default=600.0)
    parser.add_argument("--no-peer", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    if args.steps:
        args.steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
        args.streams = max(args.steps)
    else:
        args.steps = [args.streams * k // 4 for k in (1, 2, 3, 4)]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    print(report(results, args))
    path = save_results("memory", {"args": vars(args), "results": [vars(r) for r in results]})
    log(f"results saved to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
