"""Fixtures for the bad-input suite: an app on the embedded defaults (local provider, dev identity) with
small body limits, real resources to aim at (a chat with a completed turn, its assistant message and an
attachment linked to it), and a snapshot of every table so a test can prove a rejected request wrote
nothing.

The outbox scheduler is off, so enqueued rows stay put and count as writes; nothing else writes in the
background (the orphan watchdog is off too).

`api` runs on SQLite only (cases decided in the HTTP layer); `api_any_engine` runs on SQLite and on
PostgreSQL (cases whose values reach the database, where the engines differ).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import databases
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient
from openapi.conftest import embedded_config

import minichat_host.outbox.tables  # noqa: F401  (registers the outbox tables on the shared metadata)
from minichat_host.api.openapi import Operation
from minichat_host.app import DATABASE_KEY, create_app
from minichat_host.db.tables import metadata

API = "/mini-chat/v1"
PROBLEM_JSON = "application/problem+json"
MAX_JSON_BODY_BYTES = 64 * 1024
MAX_UPLOAD_KB = 256
# Outbox bookkeeping that the scheduler (off here) would move; every other table is compared row by row.
VOLATILE_TABLES = frozenset({"outbox_processor", "outbox_vacuum_counter"})

ClientT = TestClient[Any, Any]


@dataclass
class Api:
    """An app under test with real ids to aim at."""

    client: ClientT
    chat_id: str
    request_id: str
    assistant_id: str
    attachment_id: str
    model_id: str

    @property
    def db(self) -> databases.Database:
        database: databases.Database = self.client.app[DATABASE_KEY]
        return database

    def real_ids(self) -> dict[str, str]:
        return {
            "id": self.chat_id,
            "request_id": self.request_id,
            "msg_id": self.assistant_id,
            "attachment_id": self.attachment_id,
            "model_id": self.model_id,
        }

    def url(self, op: Operation, **overrides: str) -> str:
        """The operation's URL with real ids, some replaced."""
        values = {**self.real_ids(), **overrides}
        path = op.path
        for name in op.path_parameters:
            path = path.replace(f"{{{name}}}", values[name])
        return f"/mini-chat{path}"

    async def snapshot(self) -> dict[str, list[tuple[str, ...]]]:
        result: dict[str, list[tuple[str, ...]]] = {}
        for table in metadata.sorted_tables:
            if table.name in VOLATILE_TABLES:
                continue
            rows = await self.db.fetch_all(sa.select(*table.c))
            result[table.name] = sorted(tuple(str(row[c.name]) for c in table.c) for row in rows)
        return result

    @asynccontextmanager
    async def unchanged(self) -> AsyncIterator[None]:
        """Assert that nothing inside the block wrote to any table."""
        before = await self.snapshot()
        yield
        after = await self.snapshot()
        changed = {name for name in before if before[name] != after[name]}
        assert not changed, f"rejected requests changed tables: {sorted(changed)}"


async def expect_problem(response: Any, status: int | None = None, code: str | None = None) -> dict[str, Any]:
    """A problem+json 4xx (or the given status / code) with every member; returns the body."""
    text = await response.text()
    assert response.content_type == PROBLEM_JSON, (response.status, text[:300])
    if status is None:
        assert 400 <= response.status < 500, (response.status, text[:300])
    else:
        assert response.status == status, text[:300]
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["status"] == response.status
    assert isinstance(body["code"], str) and body["code"], body
    if code is not None:
        assert body["code"] == code, body
    for member in ("type", "title", "detail"):
        assert isinstance(body[member], str), body
    assert "Traceback" not in text
    return body


async def _seed(client: ClientT) -> Api:
    chat = await client.post(f"{API}/chats", json={"title": "bad input"})
    assert chat.status == 201, await chat.text()
    chat_id = (await chat.json())["id"]
    upload = await client.post(
        f"{API}/chats/{chat_id}/attachments",
        data=_form("notes.txt", b"A small text attachment.\n", "text/plain"),
    )
    assert upload.status == 201, await upload.text()
    attachment_id = (await upload.json())["id"]
    request_id = str(uuid.uuid4())
    stream = await client.post(
        f"{API}/chats/{chat_id}/messages:stream",
        json={"content": "hello", "request_id": request_id, "attachment_ids": [attachment_id]},
    )
    text = await stream.text()
    assert stream.status == 200 and "event: done" in text, text
    messages = await (await client.get(f"{API}/chats/{chat_id}/messages")).json()
    assistant_id = next(m["id"] for m in messages["items"] if m["role"] == "assistant")
    models = await (await client.get(f"{API}/models")).json()
    return Api(client, chat_id, request_id, assistant_id, attachment_id, models["items"][0]["model_id"])


def _form(filename: str, content: bytes, content_type: str) -> Any:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", content, filename=filename, content_type=content_type)
    return form


def _config(db_url: str, data_dir: Path, **sections: Mapping[str, Any]) -> Any:
    return embedded_config(
        db_url,
        data_dir,
        server={"max_json_body_bytes": MAX_JSON_BODY_BYTES},
        outbox={"enabled": False},
        rag={"uploaded_file_max_size_kb": MAX_UPLOAD_KB, "uploaded_image_max_size_kb": MAX_UPLOAD_KB},
        **sections,
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
async def api(sqlite_migrated_db_url: str, data_dir: Path, aiohttp_client: Any) -> Api:
    client: ClientT = await aiohttp_client(create_app(_config(sqlite_migrated_db_url, data_dir)))
    return await _seed(client)


@pytest.fixture
async def api_any_engine(migrated_db_url: str, data_dir: Path, aiohttp_client: Any) -> Api:
    client: ClientT = await aiohttp_client(create_app(_config(migrated_db_url, data_dir)))
    return await _seed(client)
