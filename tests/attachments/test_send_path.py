"""The helpers the send path calls: `attachment_ids` validation, message links, what the context needs,
and the `local` provider's search and spreadsheet adapters over the built-in local storage."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from attachments.harness import (
    DEV_TENANT,
    DEV_USER,
    PREFIX,
    XLSX,
    ClientT,
    Stack,
    create_chat,
    png_bytes,
    seed_message,
    upload_ok,
    xlsx_bytes,
)
from minichat_host.db.tables import attachments
from minichat_host.domain.attachments import (
    InvalidAttachment,
    TooManyImages,
    attachment_summaries,
    context_attachments,
    link_message_attachments,
    make_local_search,
    make_local_sheet_reader,
    validate_message_attachments,
)


async def validate(stack: Stack, chat_id: str, ids: list[Any], *, user: uuid.UUID = DEV_USER) -> Any:
    async with stack.database.transaction():
        return await validate_message_attachments(
            stack.database,
            tenant_id=DEV_TENANT,
            user_id=user,
            chat_id=uuid.UUID(chat_id),
            attachment_ids=[uuid.UUID(str(i)) for i in ids],
            max_images=stack.config.rag.max_images_per_message,
        )


async def test_validation_rules(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    other_chat = await create_chat(client)
    doc = (await upload_ok(client, chat_id, "a.txt", "text/plain", b"alpha"))["id"]
    foreign = (await upload_ok(client, other_chat, "b.txt", "text/plain", b"beta"))["id"]
    assert (await validate(stack, chat_id, [])).records == ()
    assert (await validate(stack, chat_id, [doc])).ids == (uuid.UUID(doc),)
    with pytest.raises(InvalidAttachment, match="Duplicate"):
        await validate(stack, chat_id, [doc, doc])
    for bad in (foreign, uuid.uuid4()):
        with pytest.raises(InvalidAttachment, match="not found"):
            await validate(stack, chat_id, [bad])
    with pytest.raises(InvalidAttachment, match="another user"):
        await validate(stack, chat_id, [doc], user=uuid.uuid4())
    await stack.database.execute(
        attachments.update().where(attachments.c.id == uuid.UUID(doc)).values(status="pending")
    )
    with pytest.raises(InvalidAttachment, match="not ready"):
        await validate(stack, chat_id, [doc])
    await stack.database.execute(
        attachments.update().where(attachments.c.id == uuid.UUID(doc)).values(status="ready")
    )
    assert (await client.delete(f"{PREFIX}/chats/{chat_id}/attachments/{doc}")).status == 204
    with pytest.raises(InvalidAttachment, match="not found"):
        await validate(stack, chat_id, [doc])


async def test_too_many_images(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    limit = stack.config.rag.max_images_per_message
    images = [
        (await upload_ok(client, chat_id, f"{i}.png", "image/png", png_bytes(8, 8)))["id"]
        for i in range(limit + 1)
    ]
    assert len((await validate(stack, chat_id, images[:limit])).images) == limit
    with pytest.raises(TooManyImages):
        await validate(stack, chat_id, images)


async def test_link_context_and_summaries(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    chat = uuid.UUID(chat_id)
    empty = await context_attachments(stack.database, chat_id=chat)
    assert (empty.ready_document_count, empty.vector_store_id, empty.file_search) == (0, None, False)
    doc = await upload_ok(client, chat_id, "notes.txt", "text/plain", b"The launch date is March 3.")
    sheet = await upload_ok(client, chat_id, "sales.xlsx", XLSX, xlsx_bytes([["a", "b"], [1, 2]]))
    image = await upload_ok(client, chat_id, "p.png", "image/png", png_bytes(16, 16))
    chosen = await validate(stack, chat_id, [image["id"], doc["id"]])
    message_id = await seed_message(stack.database, chat_id)
    async with stack.database.transaction():
        await link_message_attachments(
            stack.database,
            tenant_id=DEV_TENANT,
            chat_id=chat,
            message_id=message_id,
            attachments=chosen,
            now=dt.datetime.now(dt.UTC),
        )
    context = await context_attachments(stack.database, chat_id=chat, current=chosen)
    assert context.ready_document_count == 2
    assert context.vector_store_id is not None and context.file_search
    assert len(context.code_interpreter_file_ids) == 1
    assert context.citation_titles[doc["id"]] == "notes.txt"
    (part,) = context.image_parts
    assert (
        part.attachment_id == uuid.UUID(image["id"])
        and part.to_input_image().file_id == part.provider_file_id
    )
    summaries = await attachment_summaries(stack.database, chat, [message_id, uuid.uuid4()])
    listed = summaries[message_id]
    assert [s.filename for s in listed] == ["p.png", "notes.txt"]
    assert listed[0].img_thumbnail is not None and listed[1].img_thumbnail is None
    assert sheet["kind"] == "document"


async def test_local_search_over_the_local_storage(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    first = await upload_ok(client, chat_id, "plan.txt", "text/plain", b"The launch date is March third.")
    await upload_ok(client, chat_id, "other.md", "text/markdown", b"# Budget\nWe spend money on servers.")
    context = await context_attachments(stack.database, chat_id=uuid.UUID(chat_id))
    assert context.vector_store_id is not None
    search = make_local_search(stack.database, stack.plugins)
    hits = await search(str(DEV_TENANT), context.vector_store_id, "When is the launch?", 5)
    assert hits[0].attachment_id == first["id"] and "launch" in hits[0].snippet
    assert await search(str(uuid.uuid4()), context.vector_store_id, "launch", 5) == []
    assert await search(str(DEV_TENANT), "vs-unknown", "launch", 5) == []
    # A deleted attachment is never found again, even before its clean-up ran.
    assert (await client.delete(f"{PREFIX}/chats/{chat_id}/attachments/{first['id']}")).status == 204
    after = await search(str(DEV_TENANT), context.vector_store_id, "launch date", 5)
    assert first["id"] not in {hit.attachment_id for hit in after}


async def test_local_sheet_reader(stack: Stack, client: ClientT) -> None:
    chat_id = await create_chat(client)
    rows = [["region", "revenue"], ["north", 1200], ["south", 800]]
    await upload_ok(client, chat_id, "sales-data.xlsx", XLSX, xlsx_bytes(rows))
    context = await context_attachments(stack.database, chat_id=uuid.UUID(chat_id))
    (file_id,) = context.code_interpreter_file_ids
    reader = make_local_sheet_reader(stack.config.data_dir())
    assert await reader(str(DEV_TENANT), file_id) == rows
    assert await reader(str(DEV_TENANT), "file-missing") == []
    assert await reader("../../etc", file_id) == []
