"""Provider clean-up through the outbox, ported from the original's clean-up handler tests (seeds 001/002)
as end-to-end scenarios: HTTP deletes enqueue, the outbox delivers, a throw-away storage plugin fails on
demand. Retries need no sleeping: `Stack.drain()` moves the outbox clock past every backoff."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from attachments.harness import (
    DEV_TENANT,
    PREFIX,
    ClientT,
    FakeStorage,
    Stack,
    attachment_row,
    create_chat,
    open_client,
    open_stack,
    png_bytes,
    upload_ok,
    vector_store_rows,
)

from minichat_host import constants
from minichat_host.db.repos import attachments as repo
from minichat_host.db.tables import attachments, chats
from minichat_host.domain.attachments import AttachmentCleanupEvent
from minichat_host.domain.cleanup import ChatCleanupEvent, on_chat_deleted
from minichat_host.outbox.models import Delivery
from minichat_host.plugins.errors import PermanentError, TransientError
from minichat_host.testing import register_plugin


@asynccontextmanager
async def scenario(
    db_url: str, data_dir: Path, storage: FakeStorage, **sections: Any
) -> AsyncIterator[tuple[Stack, ClientT]]:
    async with open_stack(db_url, data_dir, **sections) as stack, open_client(stack) as client:
        with register_plugin(stack.plugins, storage, name="throwaway-storage"):
            yield stack, client


async def chat_with_files(client: ClientT, count: int = 2) -> tuple[str, list[str]]:
    chat_id = await create_chat(client)
    ids = [
        (await upload_ok(client, chat_id, f"doc-{i}.txt", "text/plain", f"document {i}".encode()))["id"]
        for i in range(count)
    ]
    ids.append((await upload_ok(client, chat_id, "pic.png", "image/png", png_bytes(10, 10)))["id"])
    return chat_id, ids


async def cleanup_states(stack: Stack, chat_id: str) -> list[tuple[str | None, int]]:
    rows = await stack.database.fetch_all(
        sa.select(attachments.c.cleanup_status, attachments.c.cleanup_attempts)
        .where(attachments.c.chat_id == uuid.UUID(chat_id))
        .order_by(attachments.c.created_at)
    )
    return [(r[0], int(r[1])) for r in rows]


def delivery(queue: str, payload: Any) -> Delivery:
    data = payload if isinstance(payload, bytes) else msgspec.json.encode(payload)
    return Delivery(
        queue=queue,
        partition=0,
        seq=1,
        payload=data,
        payload_type=constants.PAYLOAD_TYPE_JSON,
        attempts=0,
        created_at=dt.datetime.now(dt.UTC),
    )


async def test_chat_delete_with_a_flaky_storage_ends_clean(migrated_db_url: str, data_dir: Path) -> None:
    storage = FakeStorage(fail_deletes=2, fail_store_deletes=1)
    async with scenario(migrated_db_url, data_dir, storage) as (stack, client):
        chat_id, _ = await chat_with_files(client)
        assert len(storage.files) == 3 and len(storage.stores) == 1
        response = await client.delete(f"{PREFIX}/chats/{chat_id}")
        assert response.status == 204
        assert {state for state, _ in await cleanup_states(stack, chat_id)} == {"pending"}
        await stack.drain()
        assert storage.files == {} and storage.stores == {}
        assert sorted(await cleanup_states(stack, chat_id)) == [("done", 0), ("done", 1), ("done", 1)]
        assert await vector_store_rows(stack.database) == []
        assert stack.counter("minichat_cleanup_total", {"resource": "file", "outcome": "retry"}) == 2
        assert stack.counter("minichat_cleanup_total", {"resource": "file", "outcome": "completed"}) == 3
        assert (
            stack.counter("minichat_cleanup_total", {"resource": "vector_store", "outcome": "completed"}) == 1
        )
        assert await stack.outbox.dead_letters.list() == []


async def test_chat_delete_with_a_dead_storage_ends_failed(migrated_db_url: str, data_dir: Path) -> None:
    storage = FakeStorage(fail_deletes=-1)
    async with scenario(migrated_db_url, data_dir, storage, cleanup={"max_attempts": 3}) as (stack, client):
        chat_id, _ = await chat_with_files(client, count=1)
        assert (await client.delete(f"{PREFIX}/chats/{chat_id}")).status == 204
        await stack.drain()
        assert await cleanup_states(stack, chat_id) == [("failed", 3), ("failed", 3)]
        row = await stack.database.fetch_one(sa.select(attachments.c.last_cleanup_error).limit(1))
        assert row is not None and "provider 503" in row[0]
        assert len(storage.files) == 2  # given up on, and counted
        assert stack.counter("minichat_cleanup_total", {"resource": "file", "outcome": "failed"}) == 2
        # The vector store still goes, with the "deleted with failed files" metric.
        assert storage.stores == {} and await vector_store_rows(stack.database) == []
        assert stack.counter("minichat_cleanup_vector_store_with_failed_files_total") == 1
        assert await stack.outbox.dead_letters.list() == []


async def test_attachment_delete_with_a_dead_storage_dead_letters(
    migrated_db_url: str, data_dir: Path
) -> None:
    storage = FakeStorage(fail_deletes=-1)
    async with scenario(migrated_db_url, data_dir, storage, cleanup={"max_attempts": 2}) as (stack, client):
        chat_id = await create_chat(client)
        att = await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
        assert (await client.delete(f"{PREFIX}/chats/{chat_id}/attachments/{att['id']}")).status == 204
        await stack.drain()
        row = await attachment_row(stack.database, att["id"])
        assert (row["cleanup_status"], row["cleanup_attempts"]) == ("failed", 2)
        (letter,) = await stack.outbox.dead_letters.list()
        assert letter.queue == constants.QUEUE_ATTACHMENT_CLEANUP
        assert "max attempts (2) reached" in letter.last_error
        assert stack.counter("minichat_cleanup_total", {"resource": "file", "outcome": "failed"}) == 1


async def test_attachment_delete_with_a_flaky_storage_retries(migrated_db_url: str, data_dir: Path) -> None:
    storage = FakeStorage(fail_deletes=2)
    async with scenario(migrated_db_url, data_dir, storage) as (stack, client):
        chat_id = await create_chat(client)
        att = await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
        (file_id,) = storage.files
        assert (await client.delete(f"{PREFIX}/chats/{chat_id}/attachments/{att['id']}")).status == 204
        await stack.drain()
        assert storage.delete_calls == [file_id] * 3 and storage.files == {}
        row = await attachment_row(stack.database, att["id"])
        assert (row["cleanup_status"], row["cleanup_attempts"]) == ("done", 2)
        # The chat keeps its vector store: only a chat delete removes it.
        assert len(storage.stores) == 1


async def test_attachment_cleanup_is_skipped_when_the_chat_cleanup_owns_it(
    migrated_db_url: str, data_dir: Path
) -> None:
    storage = FakeStorage()
    async with scenario(migrated_db_url, data_dir, storage) as (stack, client):
        chat_id = await create_chat(client)
        att = await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
        keep = await upload_ok(client, chat_id, "b.txt", "text/plain", b"b")
        assert (await client.delete(f"{PREFIX}/chats/{chat_id}/attachments/{att['id']}")).status == 204
        assert (await client.delete(f"{PREFIX}/chats/{chat_id}")).status == 204
        await stack.drain()
        # Each file deleted exactly once, by the chat clean-up; nothing left anywhere.
        assert sorted(storage.delete_calls) == sorted(
            [(await attachment_row(stack.database, i))["provider_file_id"] for i in (att["id"], keep["id"])]
        )
        assert storage.files == {} and storage.stores == {}
        assert {s for s, _ in await cleanup_states(stack, chat_id)} == {"done"}


async def test_a_file_already_gone_counts_as_deleted(migrated_db_url: str, data_dir: Path) -> None:
    """With the built-in local storage: a provider 404 (the file is not there) is success."""
    async with open_stack(migrated_db_url, data_dir) as stack, open_client(stack) as client:
        chat_id = await create_chat(client)
        att = await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
        row = await attachment_row(stack.database, att["id"])
        stored = stack.config.data_dir() / "files" / str(DEV_TENANT) / row["provider_file_id"]
        assert stored.exists()
        stored.unlink()
        assert (await client.delete(f"{PREFIX}/chats/{chat_id}/attachments/{att['id']}")).status == 204
        await stack.drain()
        row = await attachment_row(stack.database, att["id"])
        assert (row["cleanup_status"], row["cleanup_attempts"]) == ("done", 0)


async def test_chat_delete_removes_local_files_and_index(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir) as stack, open_client(stack) as client:
        chat_id, _ = await chat_with_files(client)
        files_dir = stack.config.data_dir() / "files" / str(DEV_TENANT)
        assert len(list(files_dir.iterdir())) == 3
        assert (await client.delete(f"{PREFIX}/chats/{chat_id}")).status == 204
        await stack.drain()
        assert list(files_dir.iterdir()) == []
        assert list((stack.config.data_dir() / "vector_stores").iterdir()) == []
        assert await vector_store_rows(stack.database) == []


# --- the handlers called directly (the seed tests' unit cases) ------------------------------------
async def test_invalid_payloads_are_rejected(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir) as stack:
        for handler, queue in (
            (stack.cleanup.attachment_cleanup, constants.QUEUE_ATTACHMENT_CLEANUP),
            (stack.cleanup.chat_cleanup, constants.QUEUE_CHAT_CLEANUP),
        ):
            with pytest.raises(PermanentError, match="undecodable"):
                await handler(delivery(queue, b"{}"))
            with pytest.raises(PermanentError):
                await handler(delivery(queue, b"not json"))


async def test_chat_cleanup_rejects_a_live_or_missing_chat(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir) as stack, open_client(stack) as client:
        live = await create_chat(client)
        for chat_id in (uuid.UUID(live), uuid.uuid4()):
            event = ChatCleanupEvent(
                reason="chat_soft_delete",
                tenant_id=DEV_TENANT,
                chat_id=chat_id,
                system_request_id=uuid.uuid4(),
                chat_deleted_at=dt.datetime.now(dt.UTC),
            )
            with pytest.raises(PermanentError, match="not soft-deleted"):
                await stack.cleanup.chat_cleanup(delivery(constants.QUEUE_CHAT_CLEANUP, event))


async def test_chat_cleanup_of_an_empty_chat_succeeds(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir) as stack, open_client(stack) as client:
        chat_id = await create_chat(client)
        assert (await client.delete(f"{PREFIX}/chats/{chat_id}")).status == 204
        assert await stack.drain() == 1


async def test_chat_cleanup_counts_one_attempt_per_delivery(migrated_db_url: str, data_dir: Path) -> None:
    storage = FakeStorage(fail_deletes=-1)
    async with scenario(migrated_db_url, data_dir, storage) as (stack, client):
        chat_id = await create_chat(client)
        await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
        await stack.database.execute(
            chats.update().where(chats.c.id == uuid.UUID(chat_id)).values(deleted_at=dt.datetime.now(dt.UTC))
        )
        chat = await repo.chat_by_id(stack.database, uuid.UUID(chat_id))
        assert chat is not None
        async with stack.database.transaction():
            await on_chat_deleted(stack.database, chat)
        event = ChatCleanupEvent(
            reason="chat_soft_delete",
            tenant_id=DEV_TENANT,
            chat_id=uuid.UUID(chat_id),
            system_request_id=uuid.uuid4(),
            chat_deleted_at=dt.datetime.now(dt.UTC),
        )
        with pytest.raises(TransientError, match="still to delete"):
            await stack.cleanup.chat_cleanup(delivery(constants.QUEUE_CHAT_CLEANUP, event))
        ((status, attempts),) = await cleanup_states(stack, chat_id)
        assert (status, attempts) == ("pending", 1)
        row = await stack.database.fetch_one(sa.select(attachments.c.last_cleanup_error))
        assert row is not None and row[0]


async def test_attachment_cleanup_without_a_provider_file_is_done(
    migrated_db_url: str, data_dir: Path
) -> None:
    async with open_stack(migrated_db_url, data_dir) as stack, open_client(stack) as client:
        chat_id = await create_chat(client)
        att = await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
        now = dt.datetime.now(dt.UTC)
        await stack.database.execute(
            attachments.update()
            .where(attachments.c.id == uuid.UUID(att["id"]))
            .values(provider_file_id=None, deleted_at=now, cleanup_status="pending")
        )
        event = AttachmentCleanupEvent(
            event_type="attachment_deleted",
            tenant_id=DEV_TENANT,
            chat_id=uuid.UUID(chat_id),
            attachment_id=uuid.UUID(att["id"]),
            provider_file_id=None,
            vector_store_id=None,
            storage_backend="local",
            attachment_kind="document",
            deleted_at=now,
        )
        await stack.cleanup.attachment_cleanup(delivery(constants.QUEUE_ATTACHMENT_CLEANUP, event))
        assert (await attachment_row(stack.database, att["id"]))["cleanup_status"] == "done"
        # A stale redelivery of a finished clean-up is acknowledged and changes nothing.
        await stack.cleanup.attachment_cleanup(delivery(constants.QUEUE_ATTACHMENT_CLEANUP, event))


async def test_record_cleanup_attempt_is_guarded(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir) as stack, open_client(stack) as client:
        chat_id = await create_chat(client)
        att = uuid.UUID((await upload_ok(client, chat_id, "a.txt", "text/plain", b"a"))["id"])
        now = dt.datetime.now(dt.UTC)
        outcome = await repo.record_cleanup_attempt(stack.database, att, error="x", max_attempts=2, now=now)
        assert outcome is repo.CleanupOutcome.ALREADY_TERMINAL  # not pending: nothing changes
        await stack.database.execute(
            attachments.update().where(attachments.c.id == att).values(cleanup_status="pending")
        )
        attempts = [
            await repo.record_cleanup_attempt(stack.database, att, error=f"e{i}", max_attempts=2, now=now)
            for i in range(3)
        ]
        assert attempts == [
            repo.CleanupOutcome.STILL_PENDING,
            repo.CleanupOutcome.TERMINAL_FAILURE,
            repo.CleanupOutcome.ALREADY_TERMINAL,
        ]
        row = await attachment_row(stack.database, att)
        assert (row["cleanup_status"], row["cleanup_attempts"], row["last_cleanup_error"]) == (
            "failed",
            2,
            "e1",
        )


async def test_chat_delete_hook_rolls_back_with_the_chat(migrated_db_url: str, data_dir: Path) -> None:
    async with open_stack(migrated_db_url, data_dir) as stack, open_client(stack) as client:
        chat_id = await create_chat(client)
        await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
        chat = await repo.chat_by_id(stack.database, uuid.UUID(chat_id))
        assert chat is not None

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            async with stack.database.transaction():
                await on_chat_deleted(stack.database, chat)
                raise Boom
        assert await cleanup_states(stack, chat_id) == [(None, 0)]
        assert await stack.backlog() == 0
