"""Helpers for the chat API tests: constants, the test catalog, problem assertions, row seeding for what
only the streaming path writes (messages, attachments, quota usage), and a whole-table snapshot to prove a
rejected request changed nothing."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import databases
import sqlalchemy as sa
from aiohttp.test_utils import TestClient

from minichat_host import constants
from minichat_host.config import Config
from minichat_host.db.tables import (
    attachments,
    chats,
    message_attachments,
    message_reactions,
    messages,
    quota_usage,
)

PREFIX = "/mini-chat/v1"
DEV_TENANT = uuid.UUID(constants.DEV_TENANT_ID)
DEV_USER = uuid.UUID(constants.DEV_USER_ID)
PROBLEM_JSON = "application/problem+json"

TEST_CATALOG: list[dict[str, Any]] = [
    {
        "id": "gpt-4.1",
        "provider_model_id": "minichat-local",
        "display_name": "GPT-4.1",
        "description": "Premium test model",
        "tier": "premium",
        "multimodal_capabilities": ["VISION_INPUT"],
        "context_window": 128000,
        "multiplier_display": "3x",
        "preference": {"is_default": True, "sort_order": 0},
    },
    {
        "id": "retired-0.9",
        "provider_model_id": "minichat-local",
        "display_name": "Retired",
        "tier": "standard",
        "enabled": False,
    },
    {
        "id": "gpt-4.1-mini",
        "provider_model_id": "minichat-local",
        "display_name": "GPT-4.1 mini",
        "tier": "standard",
        "context_window": 64000,
        "multiplier_display": "1x",
    },
    {
        "id": "org/model-2.5",
        "provider_model_id": "minichat-local",
        "display_name": "Org model",
        "tier": "standard",
    },
]

ClientT = TestClient[Any, Any]
ConfigFactory = Callable[..., Config]
ClientFactory = Callable[..., Awaitable[ClientT]]


async def create_chat(client: ClientT, **body: Any) -> dict[str, Any]:
    response = await client.post(f"{PREFIX}/chats", json=body)
    assert response.status == 201, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def expect_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """Assert a problem+json answer with this status and code; return the body."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == PROBLEM_JSON, text
    body: dict[str, Any] = await response.json(content_type=None)
    assert body["code"] == code, body
    assert body["status"] == status
    for member in ("type", "title", "detail"):
        assert isinstance(body[member], str) and body[member], body
    return body


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def seed_message(
    database: databases.Database,
    chat_id: str | uuid.UUID,
    *,
    role: str = "user",
    content: str = "hello",
    request_id: uuid.UUID | bool | None = True,
    created_at: dt.datetime | None = None,
    deleted: bool = False,
    model: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    tenant_id: uuid.UUID = DEV_TENANT,
) -> uuid.UUID:
    """Insert a message row as the streaming path would; `request_id=True` makes a fresh one."""
    message_id = uuid.uuid4()
    now = created_at or utc_now()
    await database.execute(
        messages.insert().values(
            id=message_id,
            tenant_id=tenant_id,
            chat_id=uuid.UUID(str(chat_id)),
            request_id=uuid.uuid4() if request_id is True else (request_id or None),
            role=role,
            content=content,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            created_at=now,
            deleted_at=now if deleted else None,
        )
    )
    return message_id


async def seed_attachment(
    database: databases.Database,
    chat_id: str | uuid.UUID,
    *,
    filename: str = "notes.txt",
    kind: str = "document",
    status: str = "ready",
    thumbnail: tuple[bytes, int, int] | None = None,
    deleted: bool = False,
    created_at: dt.datetime | None = None,
    tenant_id: uuid.UUID = DEV_TENANT,
    user_id: uuid.UUID = DEV_USER,
) -> uuid.UUID:
    attachment_id = uuid.uuid4()
    now = created_at or utc_now()
    await database.execute(
        attachments.insert().values(
            id=attachment_id,
            tenant_id=tenant_id,
            chat_id=uuid.UUID(str(chat_id)),
            uploaded_by_user_id=user_id,
            filename=filename,
            content_type="image/png" if kind == "image" else "text/plain",
            size_bytes=10,
            status=status,
            attachment_kind=kind,
            img_thumbnail=None if thumbnail is None else thumbnail[0],
            img_thumbnail_width=None if thumbnail is None else thumbnail[1],
            img_thumbnail_height=None if thumbnail is None else thumbnail[2],
            created_at=now,
            updated_at=now,
            deleted_at=now if deleted else None,
        )
    )
    return attachment_id


async def link_attachment(
    database: databases.Database,
    chat_id: str | uuid.UUID,
    message_id: uuid.UUID,
    attachment_id: uuid.UUID,
    *,
    created_at: dt.datetime | None = None,
    tenant_id: uuid.UUID = DEV_TENANT,
) -> None:
    await database.execute(
        message_attachments.insert().values(
            tenant_id=tenant_id,
            chat_id=uuid.UUID(str(chat_id)),
            message_id=message_id,
            attachment_id=attachment_id,
            created_at=created_at or utc_now(),
        )
    )


async def seed_usage(
    database: databases.Database,
    *,
    period_type: str,
    period_start: dt.date,
    bucket: str,
    spent: int,
    reserved: int = 0,
    tenant_id: uuid.UUID = DEV_TENANT,
    user_id: uuid.UUID = DEV_USER,
) -> None:
    await database.execute(
        quota_usage.insert().values(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            user_id=user_id,
            period_type=period_type,
            period_start=period_start,
            bucket=bucket,
            spent_credits_micro=spent,
            reserved_credits_micro=reserved,
            updated_at=utc_now(),
        )
    )


async def set_chat_updated_at(database: databases.Database, chat_id: str, when: dt.datetime) -> None:
    await database.execute(chats.update().where(chats.c.id == uuid.UUID(chat_id)).values(updated_at=when))


SNAPSHOT_TABLES = (chats, messages, message_reactions, attachments, message_attachments, quota_usage)


async def table_snapshot(database: databases.Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables the chat API can write, in a stable order (compare before / after)."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    for table in SNAPSHOT_TABLES:
        columns = list(table.c)
        rows = await database.fetch_all(sa.select(*columns))
        result[table.name] = sorted(tuple(str(row[c.name]) for c in columns) for row in rows)
    return result
