"""Shared helpers of the stream, API and memory benchmarks (bench/stream.py, bench/api.py, bench/memory.py).

Every server a benchmark talks to runs in its own process, so the client's CPU is never the server's:
- the fake OpenAI provider (tests/fakes/openai_server.py), started through this file (`python
  bench/common.py fake ...`) so it can stamp each text delta with its send time (`tok3@<monotonic ns>`)
  or stall after the stream started, and run on uvloop;
- minichat itself (`python -m minichat_host serve --config FILE`) on SQLite or PostgreSQL, JWT auth, the
  bundled plugins, a model catalog that points at the fake through the `openai_chat` adapter;
- the LiteLLM proxy (the peer), installed from PyPI into bench/.venv-litellm on first use.

Both clocks are CLOCK_MONOTONIC of one machine, so `arrival - stamp` is the one-way latency of a chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import aiohttp
import jwt
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"  # git-ignored
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
sys.path.insert(0, str(ROOT / "tests"))

PREFIX = "/mini-chat"
BENCH_MODEL = "bench-model"
PROVIDER_MODEL = "gpt-bench"
FAKE_API_KEY = "sk-test"
TENANT_ID = "7e3c1a52-5b1e-4d8a-9a55-0d7c1b2a3f40"
JWT_SECRET = "bench-secret-" + "x" * 32
STAMP = re.compile(rb"@(\d{9,})")
HUGE_CREDITS = 10**15


def log(message: str) -> None:
    # tqdm.write: a progress bar that is showing is cleared first and redrawn below the line.
    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


def progress(total: int | None, desc: str) -> tqdm[Any]:
    """A progress bar over a phase loop (`bar.update(n)`, `bar.close()`): on stderr, and only when stderr is
    a terminal, so logs, pipes and results files never see it. Cleared when closed; measures nothing."""
    shown = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not shown, leave=False, dynamic_ncols=True)


def user_id(index: int) -> str:
    """A stable user id per client slot (distinct users do not share quota rows)."""
    return str(uuid.UUID(int=(0xB3 << 120) + index))


def mint_token(user: str, tenant: str = TENANT_ID) -> str:
    claims = {"tenant_id": tenant, "sub": user, "exp": int(time.time()) + 24 * 3600}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def raise_open_file_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE (inherited by the servers started after this); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- statistics ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Dist:
    """p50/p95/p99 of a list of samples (milliseconds)."""

    p50: float
    p95: float
    p99: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Dist:
        ordered = sorted(values)
        return cls(percentile(ordered, 50), percentile(ordered, 95), percentile(ordered, 99), len(ordered))

    def get(self, name: str) -> float:
        value: float = getattr(self, name)
        return value


def fmt_ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def fmt_added(value: float, base: float) -> str:
    """`value` as `+added (xratio)` against `base` (both ms)."""
    if math.isnan(value) or math.isnan(base):
        return "-"
    ratio = value / base if base > 0 else float("inf")
    return f"{fmt_ms(value)} ({value - base:+.2f}, x{ratio:.2f})"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines.extend(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
    )
    return "\n".join(lines)


def save_results(name: str, data: Any) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return path


# --- processes ----------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Service:
    """A server process started by a benchmark; `url` is where it listens."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def spawn(
    name: str, argv: Sequence[str], *, log_dir: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = log_dir / f"{name}.log"
    handle: IO[bytes] = log_path.open("wb")
    process = subprocess.Popen(
        list(argv),
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        cwd=str(ROOT),
    )
    handle.close()
    return process, log_path


async def wait_ready(
    service: Service, path: str, limit_seconds: float, headers: dict[str, str] | None = None
) -> None:
    """Poll `service.url + path` until it answers 200; fails with the log tail when the process exits."""
    deadline = time.monotonic() + limit_seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise RuntimeError(
                    f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}"
                )
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with session.get(
                    service.url + path, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
                ) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{service.name} not ready after {limit_seconds:.0f}s:\n{service.log_tail()}")


# --- the fake provider --------------------------------------------------------------------------------


async def start_fake(
    log_dir: Path,
    *,
    ttft_ms: float,
    token_gap_ms: float,
    tokens: int,
    stamp: bool = True,
    stall_after_start: float | None = None,
    name: str = "fake",
) -> Service:
    port = free_port()
    argv = [
        sys.executable,
        str(BENCH_DIR / "common.py"),
        "fake",
        "--port",
        str(port),
        "--ttft-ms",
        str(ttft_ms),
        "--token-gap-ms",
        str(token_gap_ms),
        "--tokens",
        str(tokens),
    ]
    if stamp:
        argv.append("--stamp-tokens")
    if stall_after_start is not None:
        argv += ["--stall-after-start", str(stall_after_start)]
    process, log_path = spawn(name, argv, log_dir=log_dir)
    service = Service(name, process, f"http://127.0.0.1:{port}", log_path)
    await wait_ready(service, "/v1/files", 30, headers={"Authorization": f"Bearer {FAKE_API_KEY}"})
    return service


def _fake_main(argv: Sequence[str]) -> int:
    """`python bench/common.py fake ...`: the test suite's fake OpenAI server with benchmark scripting."""
    parser = argparse.ArgumentParser(prog="bench/common.py fake")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--token-gap-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--stamp-tokens", action="store_true")
    parser.add_argument("--stall-after-start", type=float, default=None, help="seconds silent after headers")
    args = parser.parse_args(argv)
    from fakes.openai_server import FakeOpenAI, Script

    script = Script(
        tokens=[f"tok{i} " for i in range(args.tokens)],
        ttft_ms=args.ttft_ms,
        token_gap_ms=args.token_gap_ms,
        stamp_tokens=args.stamp_tokens,
        input_tokens=20,
    )
    if args.stall_after_start is not None:
        script.stall_at = 0
        script.stall_seconds = args.stall_after_start

    async def serve() -> None:
        # A short record buffer: the fake keeps every request it saw, which would grow under load.
        fake = FakeOpenAI(api_key=FAKE_API_KEY, default_script=script, record_limit=16)
        url = await fake.start("127.0.0.1", args.port)
        print(f"FAKE_OPENAI_URL={url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await fake.stop()

    run_on_fast_loop(serve())
    return 0


T = TypeVar("T")


def run_on_fast_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on uvloop when it is installed (the load side and the fake provider: the lighter
    they are, the less they take from the server under test on a shared machine); a loop factory, since
    `uvloop.install()` and event loop policies are deprecated."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# --- minichat -----------------------------------------------------------------------------------------


def minichat_config(data_dir: Path, database_url: str, fake_url: str, port: int) -> dict[str, Any]:
    """Production-like settings: JWT auth, quota, persistence, outbox and audit all on (fsync included)."""
    model = {
        "id": BENCH_MODEL,
        "provider_model_id": PROVIDER_MODEL,
        "display_name": "Bench model",
        "provider_id": "fake",
        "tier": "standard",
        "context_window": 128000,
        "max_output_tokens": 4096,
        "preference": {"is_default": True},
    }
    limits = {"limit_daily_credits_micro": HUGE_CREDITS, "limit_monthly_credits_micro": HUGE_CREDITS}
    return {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "data_dir": str(data_dir),
            "log_level": "WARNING",
            # server.event_loop of the service under test (asyncio, uvloop or auto); the load side is ours.
            "event_loop": os.environ.get("MINICHAT_BENCH_EVENT_LOOP", "auto"),
        },
        # database.pool_max_size of the service under test (MINICHAT_BENCH_POOL_MAX_SIZE to compare sizes).
        "database": {
            "url": database_url,
            "pool_max_size": int(os.environ.get("MINICHAT_BENCH_POOL_MAX_SIZE", "20")),
        },
        "auth": {"mode": "jwt", "jwt": {"secret": JWT_SECRET}},
        "providers": {
            "fake": {
                "kind": "openai_chat",
                "base_url": fake_url,
                "api_path": "/v1/chat/completions",
                "auth": "bearer",
                "api_key": FAKE_API_KEY,
            }
        },
        "plugins": {
            "settings": {
                "policy_static": {
                    "model_catalog": [model],
                    "default_standard_limits": limits,
                    "default_premium_limits": limits,
                }
            }
        },
        "orphan_watchdog": {"timeout_secs": 600},
    }


async def start_minichat(
    log_dir: Path,
    database_url: str,
    fake_url: str,
    *,
    name: str = "minichat",
    config_extra: dict[str, Any] | None = None,
) -> Service:
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=log_dir))
    config = minichat_config(data_dir, database_url, fake_url, port)
    for section, values in (config_extra or {}).items():
        config.setdefault(section, {}).update(values)
    config_path = data_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    process, log_path = spawn(
        name, [sys.executable, "-m", "minichat_host", "serve", "--config", str(config_path)], log_dir=log_dir
    )
    service = Service(name, process, f"http://127.0.0.1:{port}", log_path, extra={"data_dir": data_dir})
    await wait_ready(service, "/healthz", 60)
    return service


async def create_chats(
    base_url: str, users: Sequence[str], per_user: int, concurrency: int = 16
) -> dict[str, list[str]]:
    """`per_user` new chats for each user through the API; user -> chat ids."""
    result: dict[str, list[str]] = {user: [] for user in users}
    jobs = [(user, mint_token(user)) for user in users for _ in range(per_user)]
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            while not queue.empty():
                user, token = queue.get_nowait()
                async with session.post(
                    f"{base_url}{PREFIX}/v1/chats",
                    json={"title": "bench", "model": BENCH_MODEL},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    body = await response.json()
                    if response.status != 201:
                        raise RuntimeError(f"create chat: {response.status} {body}")
                    result[user].append(body["id"])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


# --- PostgreSQL ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh database on the test suite's throw-away cluster (or `MINICHAT_TEST_PG_URL`)."""
    import pg

    with pg.postgres_server() as base_url:
        name = pg.new_database_name(prefix)
        url = pg.create_database(base_url, name)
        try:
            yield url
        finally:
            with contextlib.suppress(Exception):
                pg.drop_database(base_url, name)


# --- the LiteLLM proxy (peer) -------------------------------------------------------------------------


class PeerUnavailable(RuntimeError):
    """LiteLLM could not be installed or started here; the message says why."""


def ensure_litellm(install: bool = True) -> Path:
    """bench/.venv-litellm/bin/litellm, creating the venv and installing `litellm[proxy]` when missing."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    if not install:
        raise PeerUnavailable(f"{binary} is missing (run without --no-install to install litellm[proxy])")
    log(f"installing litellm[proxy] into {LITELLM_VENV} (about 750 MB, once) ...")
    try:
        if not (LITELLM_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
            # Keep the venv out of git without touching the repository's .gitignore.
            (LITELLM_VENV / ".gitignore").write_text("*\n", encoding="utf-8")
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet", "litellm[proxy]"],
            check=True,
            timeout=1800,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise PeerUnavailable(f"installing litellm[proxy] failed: {exc}") from exc
    if not binary.exists():
        raise PeerUnavailable(f"litellm[proxy] installed but {binary} is missing")
    return binary


async def start_litellm(
    log_dir: Path, fake_url: str, *, install: bool = True, name: str = "litellm"
) -> Service:
    """One LiteLLM proxy worker relaying the fake as an OpenAI-compatible model named BENCH_MODEL."""
    binary = ensure_litellm(install)
    master_key = "sk-" + secrets.token_hex(24)
    config = {
        "model_list": [
            {
                "model_name": BENCH_MODEL,
                "litellm_params": {
                    "model": f"openai/{PROVIDER_MODEL}",
                    "api_base": f"{fake_url}/v1",
                    "api_key": FAKE_API_KEY,
                },
            }
        ],
        "litellm_settings": {"drop_params": True, "telemetry": False},
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }
    config_path = log_dir / "litellm.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    env = {
        "LITELLM_MASTER_KEY": master_key,
        # No network here: use the bundled model cost map instead of fetching it at start.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    argv = [
        str(binary),
        "--config",
        str(config_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    process, log_path = spawn(name, argv, log_dir=log_dir, env=env)
    service = Service(name, process, f"http://127.0.0.1:{port}", log_path, extra={"master_key": master_key})
    try:
        await wait_ready(service, "/health/liveliness", 180)
    except RuntimeError as exc:
        service.stop()
        raise PeerUnavailable(str(exc)) from exc
    return service


def new_log_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"minichat-{prefix}-"))


def cleanup_dir(path: Path, keep: bool) -> None:
    if keep:
        log(f"logs and data kept in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "fake":
        raise SystemExit(_fake_main(sys.argv[2:]))
    print(
        "usage: python bench/common.py fake --port N [--ttft-ms X --token-gap-ms Y --tokens N --stamp-tokens]"
    )
    raise SystemExit(2)
