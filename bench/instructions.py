"""CPU instructions per streamed turn, counted by callgrind: a measure that a noisy machine barely moves.

Wall-clock figures on this shared VM vary by a factor of 2 between runs and 3 between days; the number of
instructions the server executes for the same work mostly stays within ±0.4% (about one run in eight came
out 5% low: background work landing in or out of the window; repeat a pair before trusting a difference
under ~5%). This script runs one minichat process
(SQLite, the production-like settings of bench/common.py) under `valgrind --tool=callgrind` with
instrumentation off, streams `--warmup` turns, switches counting on (`callgrind_control -i on`), streams
`--turns` sequential turns of `--tokens` tokens against the fake provider (each in a new chat; with
`--one-chat` all in one chat, whose growing history each turn reads back), waits for their finalization and
outbox delivery, and dumps the count. Everything the process runs in that window is counted (the event
loop, the relay, turn starts, finalizations, the outbox, the plugins' threads), and the event loop's
thread is also reported alone (`--separate-threads=yes`); the kernel's share of system calls is not.

The baseline is another checkout measured in the same run, e.g. the commit before a change:

    git worktree add --detach /tmp/base HEAD~1
    python bench/instructions.py --baseline /tmp/base        # ~4 minutes for the two

and the ratio of the two counts is printed. Both run on this interpreter (the checkout comes first on
`PYTHONPATH`; the bundled plugins are those installed). The fake provider's token gap (10 ms) is wide enough
for the slowed-down server to read each event on its own; `--token-gap-ms 0.5` makes it read several events
per read instead, as a saturated server does. Needs valgrind (Debian package `valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import msgspec
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # bench/common.py, next to this file
    PREFIX,
    ROOT,
    cleanup_dir,
    create_chats,
    free_port,
    log,
    minichat_config,
    mint_token,
    new_log_dir,
    save_results,
    start_fake,
    table,
    user_id,
)

# Timers and keep-alives tick at a rate of their own: the same idle window before and after for every run.
SETTLE_SECONDS = 20.0
READY_SECONDS = 600.0


async def count_instructions(
    checkout: Path, fake_url: str, log_dir: Path, *, warmup: int, turns: int, one_chat: bool = False
) -> dict[str, float]:
    """Instructions per turn of the server from `checkout` (callgrind), and its CPU seconds per turn;
    `one_chat`: every turn in the same chat, which grows a history the turns read back."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"data-{checkout.name}-", dir=log_dir))
    port = free_port()
    config = minichat_config(data_dir, f"sqlite:///{data_dir}/minichat.db", fake_url, port)
    config_path = data_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    out_file = data_dir / "callgrind.out"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        "-m",
        "minichat_host",
        "serve",
        "--config",
        str(config_path),
    ]
    process = _spawn(argv, checkout, data_dir / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=READY_SECONDS)) as session:
            await _wait_ready(session, url, process)
            user = user_id(0)
            headers = {"Authorization": f"Bearer {mint_token(user)}", "Content-Type": "application/json"}
            chats = (await create_chats(url, [user], 1 if one_chat else warmup + turns, concurrency=1))[user]
            if one_chat:
                chats = chats * (warmup + turns)
            body = msgspec.json.encode({"content": "Tell me a story."})

            async def turn(chat: str) -> None:
                async with session.post(
                    f"{url}{PREFIX}/v1/chats/{chat}/messages:stream", data=body, headers=headers
                ) as response:
                    data = await response.read()
                    if response.status != 200 or b"event: done" not in data:
                        raise RuntimeError(f"turn failed: {response.status} {data[-300:]!r}")

            for chat in chats[:warmup]:
                await turn(chat)
            await asyncio.sleep(SETTLE_SECONDS)
            cpu_before = _cpu_seconds(process.pid)
            _control("-i", "on", process.pid)
            for chat in chats[warmup:]:
                await turn(chat)
            await asyncio.sleep(SETTLE_SECONDS)
            _control("--dump", process.pid)
            _control("-i", "off", process.pid)
            cpu = _cpu_seconds(process.pid) - cpu_before
    finally:
        process.terminate()
        process.wait(120)
    every_thread, main_thread = _dumped_totals(data_dir)
    return {
        "instructions_per_turn": every_thread / turns,
        "loop_instructions_per_turn": main_thread / turns,
        "cpu_ms_per_turn": cpu * 1000 / turns,
    }


def _dumped_totals(data_dir: Path, out_file: str = "callgrind.out") -> tuple[int, int]:
    """(all threads, the main thread) of the dump `callgrind_control --dump` wrote: one file per thread,
    `callgrind.out.1-01` being the main thread's (the event loop's)."""
    totals: dict[int, int] = {}
    for path in data_dir.glob(f"{out_file}.1-*"):
        match = re.search(r"^totals:\s*(\d+)", path.read_text(encoding="utf-8", errors="replace"), re.M)
        if match is not None:
            totals[int(path.name.rsplit("-", 1)[1])] = int(match.group(1))
    if 1 not in totals:
        raise RuntimeError(f"no callgrind dump of the main thread in {data_dir}")
    return sum(totals.values()), totals[1]


async def _wait_ready(session: aiohttp.ClientSession, url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(int(READY_SECONDS * 2)):
        if process.poll() is not None:
            raise RuntimeError(f"minichat under valgrind exited with {process.returncode}")
        try:
            async with session.get(url + "/healthz") as response:
                if response.status == 200:
                    return
        except (aiohttp.ClientError, OSError):
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError("minichat under valgrind did not become ready")


def _spawn(argv: list[str], checkout: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    with log_path.open("wb") as server_log:
        return subprocess.Popen(argv, stdout=server_log, stderr=subprocess.STDOUT, env=env, cwd=checkout)


def _control(*args: object) -> None:
    subprocess.run(["callgrind_control", *map(str, args)], check=True, capture_output=True)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def main(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        log("valgrind is not installed (apt-get install valgrind)")
        return 2
    checkouts = [("minichat", ROOT)]
    if args.baseline is not None:
        checkouts.insert(0, ("baseline", args.baseline.resolve()))
    log_dir = new_log_dir("instructions")
    fake = await start_fake(log_dir, ttft_ms=1.0, token_gap_ms=args.token_gap_ms, tokens=args.tokens)
    results: dict[str, dict[str, float]] = {}
    try:
        for name, checkout in checkouts:
            log(f"{name}: {checkout} under callgrind, {args.warmup} + {args.turns} turns")
            results[name] = await count_instructions(
                checkout, fake.url, log_dir, warmup=args.warmup, turns=args.turns, one_chat=args.one_chat
            )
    finally:
        fake.stop()
    rows = []
    for name, result in results.items():
        ratio = loop_ratio = ""
        if name != "baseline" and "baseline" in results:
            base = results["baseline"]
            ratio = f"x{result['instructions_per_turn'] / base['instructions_per_turn']:.4f}"
            loop_ratio = f"x{result['loop_instructions_per_turn'] / base['loop_instructions_per_turn']:.4f}"
        rows.append(
            [
                name,
                f"{result['instructions_per_turn'] / 1e6:.3f} M",
                ratio,
                f"{result['loop_instructions_per_turn'] / 1e6:.3f} M",
                loop_ratio,
                f"{result['cpu_ms_per_turn']:.0f} ms (under valgrind)",
            ]
        )
    where = "in one chat" if args.one_chat else "each in a new chat"
    gap = args.token_gap_ms
    print(f"== instructions per streamed turn ({args.tokens} tokens, {gap} ms apart, {where}) ==")
    print(table(["checkout", "all threads", "ratio", "event loop thread", "ratio", "server CPU"], rows))
    path = save_results("instructions", {"args": vars(args), "results": results})
    log(f"results: {path}")
    cleanup_dir(log_dir, args.keep)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, help="another checkout (a git worktree) measured first")
    parser.add_argument("--turns", type=int, default=30, help="counted turns (sequential)")
    parser.add_argument("--warmup", type=int, default=10, help="turns before counting starts")
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--token-gap-ms", type=float, default=10.0)
    parser.add_argument(
        "--one-chat",
        action="store_true",
        help="every turn in one chat (its history grows and is read back; by default a new chat per turn)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs, data and callgrind dumps")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
