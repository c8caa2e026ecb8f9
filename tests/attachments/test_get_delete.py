"""GET and DELETE of an attachment (original-api.md §6): 404 / 403 / 204 / 204-again / 409, and the
clean-up message written in the delete transaction."""

from __future__ import annotations

import datetime as dt
import uuid

from attachments.harness import (
    DEV_TENANT,
    PREFIX,
    ClientT,
    FakeStorage,
    Stack,
    attachment_row,
    create_chat,
    expect_problem,
    open_client,
    seed_message,
    upload_ok,
)
from minichat_host import constants
from minichat_host.db.repos import attachments as repo
from minichat_host.db.tables import attachments, messages
from minichat_host.testing import register_plugin


def url(chat_id: str, attachment_id: str | uuid.UUID) -> str:
    return f"{PREFIX}/chats/{chat_id}/attachments/{attachment_id}"


async def test_get_404_cases(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    other_chat = await create_chat(client)
    att = await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
    body = await expect_problem(await client.get(url(chat_id, uuid.uuid4())), 404, "attachment_not_found")
    assert body["title"] == "Attachment not found"
    await expect_problem(await client.get(url(other_chat, att["id"])), 404, "attachment_not_found")
    await expect_problem(await client.get(url(str(uuid.uuid4()), att["id"])), 404, "chat_not_found")
    async with open_client(stack, user_id=uuid.uuid4()) as stranger:
        await expect_problem(await stranger.get(url(chat_id, att["id"])), 404, "chat_not_found")
    async with open_client(stack, tenant_id=uuid.uuid4()) as other_tenant:
        await expect_problem(await other_tenant.get(url(chat_id, att["id"])), 404, "chat_not_found")
    await expect_problem(await client.get(url(chat_id, "nope")), 400, "invalid_uuid")


async def test_delete_then_204_again_then_404_on_get(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    att = await upload_ok(client, chat_id, "disposable.txt", "text/plain", b"eighteen bytes....")
    first = await client.delete(url(chat_id, att["id"]))
    assert first.status == 204 and await first.read() == b""
    again = await client.delete(url(chat_id, att["id"]))
    assert again.status == 204 and await again.read() == b""
    await expect_problem(await client.get(url(chat_id, att["id"])), 404, "attachment_not_found")
    row = await attachment_row(stack.database, att["id"])
    assert row["deleted_at"] is not None and row["cleanup_status"] == "pending"
    # Exactly one clean-up message, although DELETE ran twice.
    status = [s for s in await stack.outbox.status() if s.queue == constants.QUEUE_ATTACHMENT_CLEANUP]
    assert sum(s.backlog for s in status) == 1


async def test_delete_404_cases(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    att = await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
    await expect_problem(await client.delete(url(chat_id, uuid.uuid4())), 404, "attachment_not_found")
    other_chat = await create_chat(client)
    await expect_problem(await client.delete(url(other_chat, att["id"])), 404, "attachment_not_found")
    async with open_client(stack, user_id=uuid.uuid4()) as stranger:
        await expect_problem(await stranger.delete(url(chat_id, att["id"])), 404, "chat_not_found")
    assert (await attachment_row(stack.database, att["id"]))["deleted_at"] is None


async def test_delete_of_someone_elses_upload_is_403(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    att = await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
    await stack.database.execute(
        attachments.update()
        .where(attachments.c.id == uuid.UUID(att["id"]))
        .values(uploaded_by_user_id=uuid.uuid4())
    )
    await expect_problem(await client.delete(url(chat_id, att["id"])), 403, "forbidden")
    assert (await attachment_row(stack.database, att["id"]))["deleted_at"] is None


async def test_referenced_attachment_is_locked(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    att = await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
    message_id = await seed_message(stack.database, chat_id)
    await repo.link_to_message(
        stack.database,
        tenant_id=DEV_TENANT,
        chat_id=uuid.UUID(chat_id),
        message_id=message_id,
        attachment_ids=[uuid.UUID(att["id"])],
        now=dt.datetime.now(dt.UTC),
    )
    body = await expect_problem(await client.delete(url(chat_id, att["id"])), 409, "attachment_locked")
    assert body["title"] == "Conflict"
    # Still locked when the message itself is deleted: any link counts.
    await stack.database.execute(
        messages.update().where(messages.c.id == message_id).values(deleted_at=dt.datetime.now(dt.UTC))
    )
    await expect_problem(await client.delete(url(chat_id, att["id"])), 409, "attachment_locked")
    row = await attachment_row(stack.database, att["id"])
    assert row["deleted_at"] is None and row["cleanup_status"] is None
    assert await stack.backlog() == 0


async def test_delete_hands_the_file_to_the_cleanup_queue(stack: Stack, client: ClientT) -> None:
    storage = FakeStorage()
    with register_plugin(stack.plugins, storage):
        chat_id = await create_chat(client)
        att = await upload_ok(client, chat_id, "a.txt", "text/plain", b"a")
        (file_id,) = storage.files
        assert (await client.delete(url(chat_id, att["id"]))).status == 204
        assert storage.files  # nothing is deleted before the outbox delivers
        await stack.drain()
        assert storage.files == {} and storage.delete_calls == [file_id]
        assert (await attachment_row(stack.database, att["id"]))["cleanup_status"] == "done"
