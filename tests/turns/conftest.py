"""Fixtures for the streamed-turn tests: an app on a migrated database (SQLite and PostgreSQL), the fake
OpenAI server as provider `fake`, the offline `local` provider, and the `Recorder` plugin (policy + event
sink) registered on the running app with `minichat_host.testing.register_plugin`."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import databases
import msgspec
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient
from fakes.openai_server import DEFAULT_API_KEY, FakeOpenAI

from minichat_host import constants
from minichat_host.api.turns import TURN_SERVICE_KEY
from minichat_host.app import DATABASE_KEY, OUTBOX_KEY, PLUGINS_KEY, create_app
from minichat_host.config import Config, parse_config
from minichat_host.db.repos import quota_ledger, turns
from minichat_host.db.tables import chat_turns, messages, quota_usage
from minichat_host.domain.turns import TurnService
from minichat_host.outbox import Outbox
from minichat_host.testing import register_plugin
from turns.recorder import Recorder

PREFIX = "/mini-chat/v1"
TENANT = uuid.UUID(constants.DEV_TENANT_ID)
USER = uuid.UUID(constants.DEV_USER_ID)
TERMINAL = {"done", "error"}


@dataclass
class Frame:
    event: str
    data: dict[str, Any]


@dataclass
class Streamed:
    status: int
    headers: dict[str, str]
    frames: list[Frame] = field(default_factory=list)
    problem: dict[str, Any] | None = None

    def named(self, event: str) -> list[Frame]:
        return [f for f in self.frames if f.event == event]

    @property
    def terminal(self) -> Frame:
        return self.frames[-1]

    @property
    def text(self) -> str:
        return "".join(f.data["content"] for f in self.named("delta"))


def parse_sse(body: str) -> list[Frame]:
    """Strict SSE parse: `event:` + one `data:` line per frame, frames separated by a blank line; comments
    (lines starting with ':') are allowed; the body must end with a complete frame."""
    assert body.endswith("\n\n") or body == "", f"stream does not end with a complete frame: {body[-80:]!r}"
    frames: list[Frame] = []
    for block in body.split("\n\n"):
        lines = [line for line in block.split("\n") if line and not line.startswith(":")]
        if not lines:
            continue
        assert len(lines) == 2, f"a frame has exactly an event and a data line: {lines!r}"
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), lines
        data = msgspec.json.decode(lines[1][len("data: ") :])
        assert isinstance(data, dict)
        frames.append(Frame(lines[0][len("event: ") :], data))
    return frames


def assert_grammar(frames: list[Frame]) -> None:
    """`stream_started ping* (delta|tool)* citations? (done|error)`, exactly one terminal, last."""
    names = [f.event for f in frames]
    assert names, "empty stream"
    assert names[0] == "stream_started", names
    index = 1
    while index < len(names) and names[index] == "ping":
        index += 1
    while index < len(names) and names[index] in ("delta", "tool"):
        index += 1
    if index < len(names) and names[index] == "citations":
        index += 1
    assert index == len(names) - 1 and names[index] in TERMINAL, names
    assert sum(n in TERMINAL for n in names) == 1


class Harness:
    """One app under test plus helpers for its API, its database and its recorded events."""

    def __init__(self, client: TestClient, recorder: Recorder, fake: FakeOpenAI) -> None:
        self.client = client
        self.recorder = recorder
        self.fake = fake

    @property
    def app(self) -> Any:
        return self.client.server.app

    @property
    def db(self) -> databases.Database:
        return self.app[DATABASE_KEY]

    @property
    def service(self) -> TurnService:
        return self.app[TURN_SERVICE_KEY]

    @property
    def outbox(self) -> Outbox:
        return self.app[OUTBOX_KEY]

    async def create_chat(self, model: str = "local-standard") -> str:
        response = await self.client.post(f"{PREFIX}/chats", json={"model": model, "title": "t"})
        assert response.status == 201, await response.text()
        chat_id: str = (await response.json())["id"]
        return chat_id

    async def stream(self, chat_id: str, body: dict[str, Any] | None = None, **kwargs: Any) -> Streamed:
        payload = body if body is not None else {"content": "Hello there"}
        response = await self.client.post(f"{PREFIX}/chats/{chat_id}/messages:stream", json=payload, **kwargs)
        return await read_stream(response)

    async def post_sse(self, path: str, method: str = "POST", **kwargs: Any) -> Streamed:
        response = await self.client.request(method, f"{PREFIX}{path}", **kwargs)
        return await read_stream(response)

    async def turn(self, chat_id: str, request_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{PREFIX}/chats/{chat_id}/turns/{request_id}")
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result

    async def wait_terminal(self, chat_id: str, request_id: str, seconds: float = 20.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            status = await self.turn(chat_id, request_id)
            if status["state"] != "running":
                return status
            assert loop.time() < deadline, f"turn {request_id} still running"
            await asyncio.sleep(0.05)

    async def wait_idle(self) -> None:
        assert await self.service.wait_idle(30.0), "turn runs did not finish"

    async def reserved(self, user_id: uuid.UUID = USER) -> int:
        return await quota_ledger.reserved_total(self.db, TENANT, user_id)

    async def usage_rows(self) -> dict[tuple[str, str, str], dict[str, int]]:
        rows = await self.db.fetch_all(sa.select(quota_usage))
        return {
            (r["period_type"], str(r["period_start"]), r["bucket"]): {
                "spent": int(r["spent_credits_micro"]),
                "reserved": int(r["reserved_credits_micro"]),
                "calls": int(r["calls"]),
                "input": int(r["input_tokens"]),
                "output": int(r["output_tokens"]),
                "web": int(r["web_search_calls"]),
                "ci": int(r["code_interpreter_calls"]),
            }
            for r in rows
        }

    async def turn_row(self, chat_id: str, request_id: str) -> turns.TurnRow:
        row = await turns.find_by_request(self.db, uuid.UUID(chat_id), uuid.UUID(request_id))
        assert row is not None
        return row

    async def count(self, table: sa.Table, *where: Any) -> int:
        return int(await self.db.fetch_val(sa.select(sa.func.count()).select_from(table).where(*where)) or 0)

    async def counts(self) -> dict[str, int]:
        from minichat_host.outbox.tables import outbox_body

        return {
            "turns": await self.count(chat_turns),
            "messages": await self.count(messages),
            "quota_rows": await self.count(quota_usage),
            "outbox": await self.count(outbox_body),
        }

    async def delivered(self, n_turns: int, *, extra_audit: int = 0) -> None:
        """Deliver the outbox until usage + turn audit events of `n_turns` finalized turns (and
        `extra_audit` mutation / delete audit events) reached the recorder."""
        recorder = self.recorder

        def arrived() -> bool:
            return (
                len(recorder.usage) >= n_turns
                and len(recorder.turn_audits()) >= n_turns
                and len(recorder.audit) - len(recorder.turn_audits()) >= extra_audit
            )

        if self.outbox.running:
            await recorder.wait_for(arrived)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not arrived():
            assert loop.time() < deadline, f"{len(recorder.usage)} usage / {len(recorder.audit)} audit events"
            if not await self.outbox.run_once():
                await asyncio.sleep(0.05)


async def read_stream(response: Any) -> Streamed:
    headers = {k.lower(): v for k, v in response.headers.items()}
    body = await response.text()
    if response.status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
        problem = msgspec.json.decode(body) if body else None
        return Streamed(response.status, headers, [], problem)
    return Streamed(response.status, headers, parse_sse(body))


ConfigHook = Callable[[dict[str, Any]], None]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def turn_config(db_url: str, data_dir: Path, fake_url: str, **sections: Any) -> Config:
    """The test app's config; `sections` are merged one level deep (a provider without `base_url` is the
    fake server)."""
    raw: dict[str, Any] = {
        "server": {"data_dir": str(data_dir)},
        "database": {"url": db_url, "migrate_on_start": False, "pool_max_size": 12},
        "providers": {
            "local": {"kind": "local", "auth": "none"},
            "fake": {
                "kind": "openai_responses",
                "base_url": fake_url,
                "api_key": DEFAULT_API_KEY,
                "read_timeout_seconds": 1.5,
                "connect_timeout_seconds": 2.0,
            },
        },
        "streaming": {"sse_ping_interval_seconds": 0.2},
        "orphan_watchdog": {"enabled": False},
        # The tests deliver with `Outbox.run_once()` (deterministic); the load test runs the scheduler.
        "outbox": {"enabled": False, "poll_interval_seconds": 0.2},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    for provider in raw["providers"].values():
        if provider.get("kind") != "local" and not provider.get("base_url"):
            provider["base_url"] = fake_url
    return parse_config(raw, env={})


@pytest.fixture
def make_harness(
    migrated_db_url: str,
    tmp_path: Path,
    fake: FakeOpenAI,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
    aiohttp_client: Any,
) -> Callable[..., Any]:
    """`await make_harness(**config sections)`: a started app with the recorder registered.

    `aiohttp_client` comes last so the app is closed before its database and fake provider go away."""
    # Only the bundled plugins: whatever else is installed in the environment stays out of these tests.
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "policy_static,audit_log")
    registered: list[tuple[Any, str]] = []

    async def make(**sections: Any) -> Harness:
        data_dir = tmp_path / f"data-{len(registered)}"
        data_dir.mkdir()
        config = turn_config(migrated_db_url, data_dir, fake.base_url, **sections)
        client = await aiohttp_client(create_app(config))
        context = register_plugin(
            client.server.app[PLUGINS_KEY], recorder, name=f"recorder-{len(registered)}"
        )
        context.__enter__()
        registered.append((context, ""))
        return Harness(client, recorder, fake)

    yield make
    for context, _ in reversed(registered):
        context.__exit__(None, None, None)


@pytest.fixture
async def harness(make_harness: Callable[..., Any]) -> Harness:
    result: Harness = await make_harness()
    return result


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def seed_attachment(
    db: databases.Database,
    chat_id: str,
    *,
    kind: str = "document",
    status: str = "ready",
    user_id: uuid.UUID = USER,
    deleted: bool = False,
) -> str:
    """An attachment row as the upload path would leave it."""
    from minichat_host.db.tables import attachments

    attachment_id = uuid.uuid4()
    now = utc_now()
    await db.execute(
        attachments.insert().values(
            id=attachment_id,
            tenant_id=TENANT,
            chat_id=uuid.UUID(chat_id),
            uploaded_by_user_id=user_id,
            filename="picture.png" if kind == "image" else "notes.txt",
            content_type="image/png" if kind == "image" else "text/plain",
            size_bytes=10,
            status=status,
            attachment_kind=kind,
            provider_file_id=f"file-{attachment_id.hex[:8]}",
            created_at=now,
            updated_at=now,
            deleted_at=now if deleted else None,
        )
    )
    return str(attachment_id)
