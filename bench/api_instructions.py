"""CPU instructions per request of the hot JSON endpoints, counted by callgrind, against another checkout.

Wall-clock CPU per request moves by a third between identical `wrk` runs on this shared machine; the
instructions one request costs the server barely move (two runs of one checkout agree within ~0.2%). This
script fills one database as `bench/api.py` does (`--chats` chats over `--users` users, 10 messages each),
then for each checkout runs one minichat process under `valgrind --tool=callgrind` with instrumentation
off, sends `--warmup` requests of each endpoint, switches counting on (`callgrind_control -i on`), sends
`--requests` requests from `--connections` client connections (each a random (user token, path) pair from
`bench/api.py`'s list), dumps the count and switches it off again, endpoint after endpoint.

    git worktree add --detach /tmp/base HEAD~1
    python bench/api_instructions.py --baseline /tmp/base --engine postgresql   # ~3 minutes

Both checkouts run on this interpreter (the checkout first on `PYTHONPATH`). Counted: every thread of the
server (the event loop's alone is also printed); not the kernel's share of system calls, nor PostgreSQL's
work. Needs valgrind (Debian package `valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api import endpoint_pairs, populate  # bench/api.py, next to this file
from common import (
    ROOT,
    cleanup_dir,
    free_port,
    log,
    minichat_config,
    new_log_dir,
    postgres_database,
    save_results,
    table,
)
from instructions import READY_SECONDS, _control, _dumped_totals, _spawn, _wait_ready

ENDPOINTS = ("healthz (baseline)", "list chats", "list messages", "get turn", "quota status")


async def _send(
    session: aiohttp.ClientSession,
    url: str,
    pairs: list[tuple[str, str | None]],
    count: int,
    connections: int,
) -> None:
    rng = random.Random(count)
    queue = [rng.choice(pairs) for _ in range(count)]

    async def client() -> None:
        while queue:
            path, token = queue.pop()
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.get(url + path, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"GET {path}: {response.status}")

    await asyncio.gather(*(client() for _ in range(connections)))


async def count_checkout(
    checkout: Path,
    database_url: str,
    pairs: dict[str, list[tuple[str, str | None]]],
    log_dir: Path,
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """Instructions per request of each endpoint for the server of `checkout` (all threads, the loop's)."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"data-{checkout.name}-", dir=log_dir))
    port = free_port()
    config_path = data_dir / "config.yaml"
    config_path.write_text(
        yaml.safe_dump(minichat_config(data_dir, database_url, "http://127.0.0.1:9", port)), encoding="utf-8"
    )
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes"]
    counts: dict[str, dict[str, float]] = {}
    url = f"http://127.0.0.1:{port}"
    process = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=READY_SECONDS)) as session:
            for number, endpoint in enumerate(args.endpoints):
                # One server per endpoint: each dump then holds that endpoint's requests alone.
                out_file = data_dir / f"callgrind-{number}.out"
                command = [*argv, f"--callgrind-out-file={out_file}", sys.executable, "-m", "minichat_host"]
                command += ["serve", "--config", str(config_path)]
                process = _spawn(command, checkout, data_dir / f"server-{number}.log")
                await _wait_ready(session, url, process)
                await _send(session, url, pairs[endpoint], args.warmup, args.connections)
                await asyncio.sleep(2)
                _control("-i", "on", process.pid)
                await _send(session, url, pairs[endpoint], args.requests, args.connections)
                _control("--dump", process.pid)
                _control("-i", "off", process.pid)
                _stop(process)
                process = None
                every_thread, main_thread = _dumped_totals(data_dir, out_file.name)
                counts[endpoint] = {
                    "instructions_per_request": every_thread / args.requests,
                    "loop_instructions_per_request": main_thread / args.requests,
                }
                log(f"  {endpoint}: {every_thread / args.requests / 1e3:.1f} k instructions per request")
    finally:
        if process is not None:
            _stop(process)
    return counts


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a graceful stop), then SIGKILL if it has not exited within a minute: the count is dumped."""
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(60)


async def main(args: argparse.Namespace) -> int:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        log("valgrind is not installed (apt-get install valgrind)")
        return 2
    checkouts = [("minichat", ROOT)]
    if args.baseline is not None:
        checkouts.insert(0, ("baseline", args.baseline.resolve()))
    log_dir = new_log_dir("api-instructions")
    results: dict[str, dict[str, dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        if args.engine == "postgresql":
            database_url = stack.enter_context(postgres_database("bench_api_instructions"))
        else:
            database_url = f"sqlite+aiosqlite:///{log_dir / 'api.db'}"
        log(f"{args.engine}: populating {args.chats} chats, {args.chats * 10} messages")
        population = await populate(database_url, args.users, args.chats, 10)
        pairs = endpoint_pairs(population, random.Random(7))
        for name, checkout in checkouts:
            log(f"{name}: {checkout} under callgrind, {args.warmup} + {args.requests} requests per endpoint")
            results[name] = await count_checkout(checkout, database_url, pairs, log_dir, args)
    rows = []
    for endpoint in args.endpoints:
        row = [endpoint]
        for name, _ in checkouts:
            row.append(f"{results[name][endpoint]['instructions_per_request'] / 1e3:.1f} k")
        if "baseline" in results:
            base = results["baseline"][endpoint]["instructions_per_request"]
            row.append(f"x{results['minichat'][endpoint]['instructions_per_request'] / base:.4f}")
        rows.append(row)
    headers = ["endpoint", *(name for name, _ in checkouts)] + (["ratio"] if "baseline" in results else [])
    print(f"== instructions per request, {args.engine} ({args.connections} connections, all threads) ==")
    print(table(headers, rows))
    path = save_results(
        "api-instructions", {"args": {**vars(args), "baseline": str(args.baseline)}, "results": results}
    )
    log(f"results: {path}")
    cleanup_dir(log_dir, args.keep)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, help="another checkout (a git worktree) measured first")
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument(
        "--endpoints",
        type=lambda text: [name.strip() for name in text.split(",")],
        default=list(ENDPOINTS),
        help=f"comma list of: {', '.join(ENDPOINTS)}",
    )
    parser.add_argument("--requests", type=int, default=300, help="counted requests per endpoint")
    parser.add_argument("--warmup", type=int, default=100, help="requests before counting starts")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--chats", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the logs, data and callgrind dumps")
    args = parser.parse_args(argv)
    unknown = [name for name in args.endpoints if name not in ENDPOINTS]
    if unknown:
        parser.error(f"unknown endpoints: {unknown}")
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
