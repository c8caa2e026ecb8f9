"""Real processes for the fault suite and the soak benchmark: the minichat host (`python -m minichat_host
serve`), the standalone fake OpenAI server, a streaming client, and readers for what the bundled plugins
write (the `policy_static` usage ledger and the `audit_log` JSON lines) and for the books in the database.

Nothing here asserts; the tests and bench/soak.py decide what the numbers must be.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import databases
import sqlalchemy as sa
import yaml

from minichat_host import constants
from minichat_host.db.tables import chat_turns, quota_usage

ROOT: Final = Path(__file__).resolve().parents[2]
FAKE_SERVER_SCRIPT: Final = ROOT / "tests" / "fakes" / "openai_server.py"
PREFIX: Final = "/mini-chat/v1"
START_TIMEOUT_SECONDS: Final = 60.0
STOP_TIMEOUT_SECONDS: Final = 30.0
FAKE_API_KEY: Final = "sk-test"
# Environment variables of the test run that must not leak into a child host.
_SCRUBBED_ENV: Final = (
    constants.ENV_CONFIG,
    constants.ENV_HOME,
    constants.ENV_LOAD_PLUGINS,
    constants.ENV_TRACE_PLUGINS,
)


class ProcessError(RuntimeError):
    """A child process did not start or stop as expected; the message carries its log tail."""


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# --- the fake provider ------------------------------------------------------------------------------------
class FakeProviderProcess:
    """`tests/fakes/openai_server.py` as its own process: every reply is `tokens` tokens, `token_gap_ms`
    apart (after `ttft_ms`)."""

    def __init__(
        self, log_path: Path, *, tokens: int, token_gap_ms: float = 0.0, ttft_ms: float = 0.0
    ) -> None:
        self.log_path = log_path
        self.args = [
            "--port",
            "0",
            "--tokens",
            str(tokens),
            "--token-gap-ms",
            str(token_gap_ms),
            "--ttft-ms",
            str(ttft_ms),
            "--record-limit",
            "50",
        ]
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [sys.executable, str(FAKE_SERVER_SCRIPT), *self.args],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        assert self._process.stdout is not None
        line = self._process.stdout.readline().decode().strip()
        if not line.startswith("FAKE_OPENAI_URL="):
            self.stop()
            raise ProcessError(f"fake provider did not start: {line!r}\n{_log_tail(self.log_path)}")
        self.url = line.split("=", 1)[1]
        return self.url

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


# --- the host ---------------------------------------------------------------------------------------------
def catalog_entry(model_id: str, provider_id: str) -> dict[str, Any]:
    """A standard-tier model served by `provider_id` (prices as the bundled demo catalog's standard)."""
    return {
        "id": model_id,
        "provider_model_id": "gpt-test",
        "display_name": model_id,
        "provider_id": provider_id,
        "tier": "standard",
        "max_output_tokens": 1000,
        "input_tokens_credit_multiplier_micro": 1_000_000,
        "output_tokens_credit_multiplier_micro": 3_000_000,
        "general_config": {"tool_support": {"file_search": False}},
        "preference": {"is_default": model_id == "fast"},
    }


def host_config(
    *,
    db_url: str,
    data_dir: Path,
    port: int,
    providers: dict[str, str],
    read_timeout_seconds: float = 5.0,
    **sections: Any,
) -> dict[str, Any]:
    """A host config for the fault tests: a model named after every fake provider (`providers`: id → base
    URL, each an `openai_responses` provider), the static policy with a ledger file and the audit log in
    `data_dir`, a fast orphan watchdog (2 s timeout, progress recorded every 0.3 s) and a short outbox lease.
    `sections` are merged one level deep over these defaults."""
    big = {"limit_daily_credits_micro": 10**15, "limit_monthly_credits_micro": 10**15}
    raw: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "data_dir": str(data_dir),
            "shutdown_timeout_seconds": 5,
        },
        "database": {"url": db_url, "pool_max_size": 10},
        "auth": {"mode": "dev"},
        "providers": {
            "local": {"kind": "local", "auth": "none"},
            **{
                name: {
                    "kind": "openai_responses",
                    "base_url": url,
                    "api_key": FAKE_API_KEY,
                    "read_timeout_seconds": read_timeout_seconds,
                    "connect_timeout_seconds": 2,
                }
                for name, url in providers.items()
            },
        },
        "plugins": {
            "settings": {
                "policy_static": {
                    "model_catalog": [catalog_entry(name, name) for name in providers],
                    "ledger_path": str(data_dir / "usage-ledger.jsonl"),
                    "default_standard_limits": big,
                    "default_premium_limits": big,
                },
                "audit_log": {"path": str(data_dir / "audit.jsonl"), "fsync": "always"},
            }
        },
        "streaming": {"sse_ping_interval_seconds": 1, "progress_update_interval_seconds": 0.3},
        "orphan_watchdog": {"enabled": True, "timeout_secs": 2, "scan_interval_secs": 0.3},
        "outbox": {
            "lease_seconds": 2,
            "lease_headroom_seconds": 0.5,
            "poll_interval_seconds": 0.2,
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 1,
            "queues": {
                constants.QUEUE_USAGE: {"timeout_seconds": 1},
                constants.QUEUE_AUDIT: {"timeout_seconds": 1},
            },
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


class HostProcess:
    """`python -m minichat_host serve --config <file>` on a loopback port; start, SIGKILL, restart, stop."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str = "host") -> None:
        self.config = config
        self.workdir = workdir
        self.name = name
        self.port: int = config["server"]["port"]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}-{self.starts}.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self) -> None:
        """Spawn the host and wait until `/health` answers (its migrations and plugins are up by then)."""
        self.spawn()
        await self.wait_healthy()

    def spawn(self) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "minichat_host", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=env,
            )

    async def wait_healthy(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_SECONDS
        async with aiohttp.ClientSession() as session:
            while True:
                if not self.alive:
                    raise ProcessError(f"{self.name} exited while starting:\n{_log_tail(self.log_path)}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"{self.base_url}/health") as response:
                        if response.status == 200:
                            return
                if loop.time() > deadline:
                    self.kill()
                    raise ProcessError(f"{self.name} did not become healthy:\n{_log_tail(self.log_path)}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (no cancellation of live turns, no lease release)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    async def stop(self) -> int:
        """SIGTERM and wait for the graceful exit; its return code (a hang is a ProcessError)."""
        process = self.process
        if process is None or process.poll() is not None:
            return process.returncode if process is not None else 0
        process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_TIMEOUT_SECONDS
        while process.poll() is None:
            if loop.time() > deadline:
                process.kill()
                process.wait(timeout=10)
                raise ProcessError(f"{self.name} did not stop on SIGTERM:\n{_log_tail(self.log_path)}")
            await asyncio.sleep(0.05)
        return process.returncode

    def logs(self) -> str:
        return "".join(
            _log_tail(self.workdir / f"{self.name}-{n}.log", 1_000_000) for n in range(1, self.starts + 1)
        )


# --- the streaming client ---------------------------------------------------------------------------------
@dataclass
class StreamResult:
    """What one `messages:stream` call saw (status, frames as they arrived, how it ended)."""

    status: int
    content_type: str = ""
    problem: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    broken: bool = False  # the connection ended without a terminal event

    @property
    def request_id(self) -> str | None:
        for name, data in zip(self.events, self.data, strict=True):
            if name == "stream_started":
                value = data.get("request_id")
                return value if isinstance(value, str) else None
        return None

    @property
    def terminal(self) -> str | None:
        return self.events[-1] if self.events and self.events[-1] in ("done", "error") else None

    @property
    def error_code(self) -> str | None:
        if self.terminal != "error":
            return None
        code = self.data[-1].get("code")
        return code if isinstance(code, str) else None

    def deltas(self) -> int:
        return self.events.count("delta")


async def stream_message(
    session: aiohttp.ClientSession,
    base_url: str,
    chat_id: str,
    content: str,
    *,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    progress: StreamResult | None = None,
) -> StreamResult:
    """POST a message and read the SSE answer frame by frame into `progress` (so a caller can watch it
    while it runs); a connection that breaks ends the result as `broken` instead of raising."""
    result = progress if progress is not None else StreamResult(status=0)
    body: dict[str, Any] = {"content": content}
    if request_id is not None:
        body["request_id"] = request_id
    url = f"{base_url}{PREFIX}/chats/{chat_id}/messages:stream"
    try:
        async with session.post(url, json=body, headers=headers) as response:
            result.status = response.status
            result.content_type = response.content_type
            if response.status != 200 or response.content_type != "text/event-stream":
                text = await response.text()
                with contextlib.suppress(ValueError):
                    result.problem = json.loads(text) if text else None
                return result
            event = ""
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[len("event: ") :]
                elif line.startswith("data: "):
                    result.data.append(json.loads(line[len("data: ") :]))
                    result.events.append(event)
    except (TimeoutError, aiohttp.ClientError, ConnectionError):
        result.broken = True
    if result.terminal is None:
        result.broken = True
    return result


async def api_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, Any]:
    """(status, content type, decoded JSON body or None) of one JSON API call."""
    async with session.request(method, url, json=json_body, headers=headers) as response:
        text = await response.text()
        decoded: Any = None
        with contextlib.suppress(ValueError):
            decoded = json.loads(text) if text else None
        return response.status, response.content_type, decoded


async def create_chat(
    session: aiohttp.ClientSession, base_url: str, model: str, headers: dict[str, str] | None = None
) -> str:
    status, _, body = await api_json(
        session,
        "POST",
        f"{base_url}{PREFIX}/chats",
        json_body={"model": model, "title": "t"},
        headers=headers,
    )
    if status != 201:
        raise ProcessError(f"creating a chat answered {status}: {body}")
    chat_id: str = body["id"]
    return chat_id


# --- what the plugins wrote -------------------------------------------------------------------------------
def read_json_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """(decoded lines, count of lines that are not JSON objects, e.g. cut short by a kill)."""
    records: list[dict[str, Any]] = []
    torn = 0
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            decoded = json.loads(line)
        except ValueError:
            torn += 1
            continue
        if isinstance(decoded, dict):
            records.append(decoded)
        else:
            torn += 1
    return records, torn


@dataclass
class Books:
    """The usage ledger and audit log of one or more hosts, counted per dedupe key / per turn."""

    usage_by_key: collections.Counter[str]
    usage_events: list[dict[str, Any]]
    turn_audits_by_turn: collections.Counter[str]
    turn_audits: list[dict[str, Any]]
    torn_lines: int

    @classmethod
    def read(cls, data_dirs: Sequence[Path]) -> Books:
        usage: list[dict[str, Any]] = []
        audits: list[dict[str, Any]] = []
        torn = 0
        for directory in data_dirs:
            ledger, bad_ledger = read_json_lines(directory / "usage-ledger.jsonl")
            audit, bad_audit = read_json_lines(directory / "audit.jsonl")
            usage.extend(ledger)
            audits.extend(record["event"] for record in audit if record.get("type") == "turn")
            torn += bad_ledger + bad_audit
        return cls(
            usage_by_key=collections.Counter(str(event.get("dedupe_key")) for event in usage),
            usage_events=usage,
            turn_audits_by_turn=collections.Counter(str(event.get("turn_id")) for event in audits),
            turn_audits=audits,
            torn_lines=torn,
        )

    def usage_for(self, key: str) -> list[dict[str, Any]]:
        return [event for event in self.usage_events if event.get("dedupe_key") == key]

    def audits_for(self, turn_id: str) -> list[dict[str, Any]]:
        return [event for event in self.turn_audits if event.get("turn_id") == turn_id]


# --- the books in the database ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TurnBook:
    turn_id: uuid.UUID
    tenant_id: uuid.UUID
    request_id: uuid.UUID
    state: str
    error_code: str | None

    @property
    def dedupe_key(self) -> str:
        return f"{self.tenant_id.hex}/{self.turn_id.hex}/{self.request_id.hex}"


async def turn_books(database: databases.Database) -> list[TurnBook]:
    rows = await database.fetch_all(
        sa.select(
            chat_turns.c.id,
            chat_turns.c.tenant_id,
            chat_turns.c.request_id,
            chat_turns.c.state,
            chat_turns.c.error_code,
        )
    )
    return [
        TurnBook(
            turn_id=uuid.UUID(str(row[0])),
            tenant_id=uuid.UUID(str(row[1])),
            request_id=uuid.UUID(str(row[2])),
            state=str(row[3]),
            error_code=row[4],
        )
        for row in rows
    ]


async def credit_totals(database: databases.Database) -> tuple[int, int]:
    """(reserved, spent) micro-credits summed over the monthly `total` bucket rows of every user (each
    charge is booked on a daily and a monthly row; the monthly one alone counts it once)."""
    row = await database.fetch_one(
        sa.select(
            sa.func.coalesce(sa.func.sum(quota_usage.c.reserved_credits_micro), 0),
            sa.func.coalesce(sa.func.sum(quota_usage.c.spent_credits_micro), 0),
        ).where(quota_usage.c.bucket == "total", quota_usage.c.period_type == "monthly")
    )
    assert row is not None
    return int(row[0]), int(row[1])


async def outbox_backlog(database: databases.Database) -> int:
    """Messages committed but not yet acknowledged (incoming + sequenced past each partition's cursor)."""
    incoming = await database.fetch_val("SELECT count(*) FROM outbox_incoming")
    outgoing = await database.fetch_val(
        "SELECT count(*) FROM outbox_outgoing o JOIN outbox_processor p ON p.partition_id = o.partition_id "
        "WHERE o.seq > p.processed_seq"
    )
    return int(incoming or 0) + int(outgoing or 0)


async def dead_letter_count(database: databases.Database) -> int:
    return int(await database.fetch_val("SELECT count(*) FROM outbox_dead_letters") or 0)


async def unsettled(database: databases.Database, data_dirs: Sequence[Path]) -> str | None:
    """None once every turn is terminal, the outbox is drained and every turn's usage key is in the
    ledger; otherwise what is still missing."""
    turns = await turn_books(database)
    running = sum(t.state == "running" for t in turns)
    backlog = await outbox_backlog(database)
    missing = {t.dedupe_key for t in turns} - set(Books.read(data_dirs).usage_by_key)
    if running or backlog or missing:
        return (
            f"{running} turn(s) running, {backlog} outbox message(s) pending, {len(missing)} usage(s) missing"
        )
    return None


async def wait_settled(
    database: databases.Database,
    data_dirs: Sequence[Path],
    *,
    within: float,
    hosts: Sequence[HostProcess] = (),
) -> None:
    """Wait until `unsettled()` is None; on timeout the error says what is missing (and the host logs)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (state := await unsettled(database, data_dirs)) is not None:
        if loop.time() > deadline:
            logs = "\n".join(_log_tail(host.log_path, 3000) for host in hosts)
            raise AssertionError(f"the books did not settle within {within:.0f} s: {state}\n{logs}")
        await asyncio.sleep(0.2)


async def wait_until(
    check: Callable[[], Any], *, within: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    """Call `check()` (sync, or returning an awaitable) until it gives something truthy, which is
    returned, or `within` seconds pass (AssertionError)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {within:.0f} s (last: {value!r})")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t: ...` then `t[0]` is the elapsed wall time in seconds (for reports only)."""
    holder: list[float] = []
    start = time.monotonic()
    try:
        yield holder
    finally:
        holder.append(time.monotonic() - start)


__all__ = [
    "Books",
    "FakeProviderProcess",
    "HostProcess",
    "ProcessError",
    "StreamResult",
    "TurnBook",
    "api_json",
    "create_chat",
    "credit_totals",
    "dead_letter_count",
    "free_port",
    "host_config",
    "outbox_backlog",
    "stream_message",
    "turn_books",
    "wait_until",
]
