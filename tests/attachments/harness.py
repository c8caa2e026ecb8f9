"""A composed test stack for attachments, clean-up and summaries (shared by tests/attachments, tests/cleanup
and tests/summaries).

`Stack` wires the same parts app.py does (database, plugin host with the bundled entry-point plugins,
outbox, catalog, chat service with the clean-up deletion hook, attachment service, the chat and
attachment routes) but drives the outbox by hand: it is never started, tests call `stack.drain()`, which
runs `Outbox.run_once()` and moves the injected clock past retry backoffs, so retries need no sleeping.

`FakeStorage` is a throw-away storage plugin (vendor `local`, priority 1, so it wins over the built-in
`local` storage once registered with `minichat_host.testing.register_plugin`), keeping files and vector
stores in memory and failing deletes on demand.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import databases
import msgspec
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from minichat_host import constants
from minichat_host.api import attachments as attachments_api
from minichat_host.api import chats as chats_api
from minichat_host.api.edge import edge_middleware
from minichat_host.api.services import CHAT_SERVICES_KEY, ChatApiServices, build_chat_services
from minichat_host.auth import Authenticator
from minichat_host.config import Config, parse_config
from minichat_host.db.engine import connect_database, dialect_name
from minichat_host.db.tables import attachments, chat_vector_stores
from minichat_host.domain.attachments import AttachmentService
from minichat_host.domain.cleanup import (
    CleanupHandlers,
    CleanupMetrics,
    chat_deletion_hook,
    register_cleanup_queues,
)
from minichat_host.outbox import Outbox, OutboxMetrics
from minichat_host.outbox.models import Delivery
from minichat_host.plugins.errors import TransientError
from minichat_host.plugins.hookspecs import hookimpl
from minichat_host.plugins.manager import PluginHost
from minichat_host.plugins.types import Capability, SearchHit, StoredFile

PREFIX = "/mini-chat/v1"
DEV_TENANT = uuid.UUID(constants.DEV_TENANT_ID)
DEV_USER = uuid.UUID(constants.DEV_USER_ID)
PROBLEM_JSON = "application/problem+json"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
ClientT = TestClient[Any, Any]


class FakeClock:
    """The outbox's and services' clock; `advance()` moves it (retry backoffs are compared against it)."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def stack_config(db_url: str, data_dir: Path, **sections: Any) -> Config:
    raw: dict[str, Any] = {
        "server": {"data_dir": str(data_dir)},
        "database": {"url": db_url, "migrate_on_start": False, "pool_max_size": 6},
        "outbox": {"retry_base_seconds": 1.0, "retry_max_seconds": 4.0},
    }
    return parse_config(merge(raw, sections), env={})


@dataclass
class Stack:
    config: Config
    database: databases.Database
    plugins: PluginHost
    outbox: Outbox
    clock: FakeClock
    services: ChatApiServices
    attachments: AttachmentService
    cleanup: CleanupHandlers
    metrics_registry: CollectorRegistry
    extra_queues: dict[str, list[Delivery]] = field(default_factory=dict)

    async def drain(self, *, rounds: int = 40) -> int:
        """Deliver until nothing is left (retries included: the clock jumps past each backoff)."""
        delivered = 0
        for _ in range(rounds):
            delivered += await self.outbox.run_once()
            if not await self.backlog():
                return delivered
            self.clock.advance(self.config.outbox.retry_max_seconds + 1)
        raise AssertionError(f"outbox still has a backlog after {rounds} rounds")

    async def run_round(self) -> int:
        """One delivery pass, then move the clock past any backoff."""
        delivered = await self.outbox.run_once()
        self.clock.advance(self.config.outbox.retry_max_seconds + 1)
        return delivered

    async def backlog(self) -> int:
        return sum(status.backlog for status in await self.outbox.status())

    def app(self, *, tenant_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None) -> web.Application:
        """The chat and attachment routes; `tenant_id` / `user_id` change the dev identity of this app."""
        prefix = self.config.server.url_prefix.rstrip("/")
        auth = msgspec.structs.replace(
            self.config.auth,
            dev_tenant_id=str(tenant_id or self.config.auth.dev_tenant_id),
            dev_user_id=str(user_id or self.config.auth.dev_user_id),
        )
        app = web.Application(middlewares=[edge_middleware(Authenticator(auth), prefix)])
        app[CHAT_SERVICES_KEY] = self.services
        app[attachments_api.ATTACHMENT_SERVICE_KEY] = self.attachments
        chats_api.register(app, prefix)
        attachments_api.register(app, prefix)
        return app

    def counter(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics_registry.get_sample_value(name, labels or {})
        return float(value or 0.0)


@asynccontextmanager
async def open_stack(
    db_url: str,
    data_dir: Path,
    *,
    extra_plugins: list[tuple[str, object]] | None = None,
    capture_queues: tuple[str, ...] = (),
    register: Callable[[Outbox, PluginHost, databases.Database, Config, FakeClock], None] | None = None,
    **sections: Any,
) -> AsyncIterator[Stack]:
    """The stack on `db_url` (migrated); `capture_queues` get a recording handler (e.g. the usage queue)."""
    config = stack_config(db_url, data_dir, **sections)
    clock = FakeClock()
    database = await connect_database(config.database_url(), max_size=config.database.pool_max_size)
    plugins = PluginHost(config, extra_plugins=extra_plugins or ())
    try:
        await plugins.start()
        registry = CollectorRegistry()
        outbox = Outbox(
            database,
            config.outbox,
            dialect=dialect_name(config.database_url()),
            metrics=OutboxMetrics(registry),
            clock=clock,
            rng=lambda: 0.0,
        )
        cleanup = register_cleanup_queues(
            outbox, plugins, database, config, metrics=CleanupMetrics(registry), clock=clock
        )
        captured: dict[str, list[Delivery]] = {}
        for queue in capture_queues:
            captured[queue] = []

            def recorder(sink: list[Delivery]) -> Callable[[Delivery], Awaitable[None]]:
                async def record(delivery: Delivery) -> None:
                    sink.append(delivery)

                return record

            outbox.register_queue(
                queue, recorder(captured[queue]), partitions=config.outbox.num_partitions, timeout=10.0
            )
        if register is not None:
            register(outbox, plugins, database, config, clock)
        await outbox.ensure_queues()
        services = build_chat_services(config, database, plugins)
        services.chats.add_deletion_hook(chat_deletion_hook(outbox, clock=clock))
        service = AttachmentService(
            database, config=config, catalog=services.catalog, plugins=plugins, outbox=outbox, clock=clock
        )
        yield Stack(
            config=config,
            database=database,
            plugins=plugins,
            outbox=outbox,
            clock=clock,
            services=services,
            attachments=service,
            cleanup=cleanup,
            metrics_registry=registry,
            extra_queues=captured,
        )
    finally:
        await plugins.aclose()
        await database.disconnect()


@asynccontextmanager
async def open_client(
    stack: Stack, *, tenant_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None
) -> AsyncIterator[ClientT]:
    client: ClientT = TestClient(TestServer(stack.app(tenant_id=tenant_id, user_id=user_id)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


# --- HTTP helpers ---------------------------------------------------------------------------------------
async def create_chat(client: ClientT, **body: Any) -> str:
    response = await client.post(f"{PREFIX}/chats", json=body)
    assert response.status == 201, await response.text()
    chat_id: str = (await response.json())["id"]
    return chat_id


def multipart_body(
    filename: str | None, content_type: str | None, data: bytes, *, boundary: str = "testboundary7MA4YWxk"
) -> tuple[bytes, str]:
    """A hand-built multipart/form-data body (so headers can be left out or malformed on purpose)."""
    out = io.BytesIO()
    out.write(f"--{boundary}\r\n".encode())
    out.write(b'Content-Disposition: form-data; name="note"\r\n\r\nignored\r\n')
    out.write(f"--{boundary}\r\n".encode())
    disposition = 'Content-Disposition: form-data; name="file"'
    if filename is not None:
        quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
        disposition += f'; filename="{quoted}"'
    out.write(disposition.encode() + b"\r\n")
    if content_type is not None:
        out.write(f"Content-Type: {content_type}\r\n".encode())
    out.write(b"\r\n")
    out.write(data)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


async def upload(
    client: ClientT, chat_id: str, filename: str | None, content_type: str | None, data: bytes
) -> Any:
    body, header = multipart_body(filename, content_type, data)
    return await client.post(
        f"{PREFIX}/chats/{chat_id}/attachments", data=body, headers={"Content-Type": header}
    )


async def upload_ok(
    client: ClientT, chat_id: str, filename: str, content_type: str, data: bytes
) -> dict[str, Any]:
    response = await upload(client, chat_id, filename, content_type, data)
    assert response.status == 201, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def expect_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    text = await response.text()
    assert response.status == status, text
    assert response.headers["Content-Type"].startswith(PROBLEM_JSON), response.headers["Content-Type"]
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["code"] == code, body
    assert body["status"] == status
    return body


# --- database helpers -------------------------------------------------------------------------------------
async def attachment_row(database: databases.Database, attachment_id: str | uuid.UUID) -> dict[str, Any]:
    record = await database.fetch_one(
        sa.select(attachments).where(attachments.c.id == uuid.UUID(str(attachment_id)))
    )
    assert record is not None
    return dict(record._mapping)


async def attachment_count(database: databases.Database) -> int:
    return int(await database.fetch_val(sa.select(sa.func.count()).select_from(attachments)) or 0)


async def vector_store_rows(database: databases.Database) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in await database.fetch_all(sa.select(chat_vector_stores))]


# --- a throw-away storage plugin ----------------------------------------------------------------------------
class FakeStorage:
    """In-memory storage for vendor `local` at priority 1 (beats the built-in). `fail_deletes` file
    deletes fail before they start succeeding (-1: always); the same for `fail_store_deletes`."""

    def __init__(
        self, *, fail_deletes: int = 0, fail_store_deletes: int = 0, fail_uploads: bool = False
    ) -> None:
        self.files: dict[str, bytes] = {}
        self.stores: dict[str, list[tuple[str, dict[str, str]]]] = {}
        self.fail_deletes = fail_deletes
        self.fail_store_deletes = fail_store_deletes
        self.fail_uploads = fail_uploads
        self.fail_indexing = False
        self.delete_calls: list[str] = []
        self.store_delete_calls: list[str] = []
        self._lock = threading.Lock()

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability=constants.CAP_STORAGE, vendor="local", priority=1)]

    @hookimpl
    def minichat_storage_upload_file(self, path: str) -> StoredFile:
        if self.fail_uploads:
            raise TransientError("storage unavailable (fake)")
        data = Path(path).read_bytes()
        file_id = f"fake-{uuid.uuid4().hex}"
        with self._lock:
            self.files[file_id] = data
        return StoredFile(file_id=file_id, size_bytes=len(data))

    @hookimpl
    def minichat_storage_delete_file(self, file_id: str) -> None:
        with self._lock:
            self.delete_calls.append(file_id)
            if self.fail_deletes != 0:
                self.fail_deletes -= 1 if self.fail_deletes > 0 else 0
                raise TransientError(f"provider 503 deleting {file_id} (fake)")
            self.files.pop(file_id, None)  # an unknown file counts as deleted (a provider 404)

    @hookimpl
    def minichat_storage_create_vector_store(self) -> str:
        store_id = f"vs-{uuid.uuid4().hex}"
        with self._lock:
            self.stores[store_id] = []
        return store_id

    @hookimpl
    def minichat_storage_add_file_to_vector_store(
        self, vector_store_id: str, file_id: str, attributes: dict[str, str]
    ) -> None:
        if self.fail_indexing:
            raise TransientError("indexing unavailable (fake)")
        with self._lock:
            self.stores[vector_store_id].append((file_id, dict(attributes)))

    @hookimpl
    def minichat_storage_delete_vector_store(self, vector_store_id: str) -> None:
        with self._lock:
            self.store_delete_calls.append(vector_store_id)
            if self.fail_store_deletes != 0:
                self.fail_store_deletes -= 1 if self.fail_store_deletes > 0 else 0
                raise TransientError("provider 503 deleting a vector store (fake)")
            self.stores.pop(vector_store_id, None)

    @hookimpl
    def minichat_storage_search(self, vector_store_id: str, query: str, max_results: int) -> list[SearchHit]:
        with self._lock:
            entries = list(self.stores.get(vector_store_id, []))
        hits = [
            SearchHit(
                attachment_id=attrs.get("attachment_id", ""), filename=file_id, snippet=query, score=1.0
            )
            for file_id, attrs in entries
        ]
        return hits[:max_results]


async def seed_message(
    database: databases.Database,
    chat_id: str | uuid.UUID,
    *,
    role: str = "user",
    content: str = "hello",
    created_at: dt.datetime | None = None,
    tenant_id: uuid.UUID = DEV_TENANT,
    request_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A message row as the send path writes it."""
    from minichat_host.db.tables import messages

    message_id = uuid.uuid4()
    await database.execute(
        messages.insert().values(
            id=message_id,
            tenant_id=tenant_id,
            chat_id=uuid.UUID(str(chat_id)),
            request_id=request_id or uuid.uuid4(),
            role=role,
            content=content,
            created_at=created_at or dt.datetime.now(dt.UTC),
        )
    )
    return message_id


def png_bytes(width: int = 640, height: int = 480, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def xlsx_bytes(rows: list[list[Any]]) -> bytes:
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()
