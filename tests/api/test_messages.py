"""`GET /chats/{id}/messages`: the message shape (always-present members, omitted nulls), attachments with
thumbnails, the caller's own reaction, hidden rows, and isolation."""

from __future__ import annotations

import base64
import datetime as dt
import uuid

import databases
import pytest

from api.helpers import (
    DEV_TENANT,
    DEV_USER,
    PREFIX,
    ClientFactory,
    ClientT,
    create_chat,
    expect_problem,
    link_attachment,
    seed_attachment,
    seed_message,
)
from minichat_host.db.tables import message_reactions

BASE = dt.datetime(2026, 5, 4, 8, 30, tzinfo=dt.UTC)
ALWAYS = {"id", "request_id", "role", "content", "attachments", "my_reaction", "created_at"}


async def add_reaction(
    database: databases.Database, message_id: uuid.UUID, user_id: uuid.UUID, value: str
) -> None:
    await database.execute(
        message_reactions.insert().values(
            id=uuid.uuid4(),
            tenant_id=DEV_TENANT,
            message_id=message_id,
            user_id=user_id,
            reaction=value,
            created_at=BASE,
        )
    )


async def test_message_shape_attachments_and_reactions(client: ClientT, database: databases.Database) -> None:
    chat = await create_chat(client)
    chat_id = chat["id"]
    request_id = uuid.uuid4()
    user_msg = await seed_message(
        database, chat_id, role="user", content="What is in these?", request_id=request_id, created_at=BASE
    )
    assistant_msg = await seed_message(
        database,
        chat_id,
        role="assistant",
        content="A cat and notes.",
        request_id=request_id,
        created_at=BASE + dt.timedelta(seconds=1),
        model="gpt-4.1-mini",
        input_tokens=120,
        output_tokens=45,
    )
    zero_tokens = await seed_message(
        database,
        chat_id,
        role="assistant",
        content="",
        created_at=BASE + dt.timedelta(seconds=2),
        model="gpt-4.1",
        input_tokens=0,
        output_tokens=0,
    )
    webp = b"RIFF\x00\x00\x00\x00WEBPVP8 fake"
    image = await seed_attachment(
        database, chat_id, filename="cat.png", kind="image", thumbnail=(webp, 64, 48), created_at=BASE
    )
    document = await seed_attachment(
        database, chat_id, filename="notes.md", status="uploaded", created_at=BASE + dt.timedelta(seconds=1)
    )
    await link_attachment(database, chat_id, user_msg, image, created_at=BASE)
    await link_attachment(database, chat_id, user_msg, document, created_at=BASE + dt.timedelta(seconds=1))
    await add_reaction(database, assistant_msg, DEV_USER, "dislike")
    await add_reaction(database, zero_tokens, uuid.uuid4(), "like")  # someone else's: never "mine"
    await add_reaction(database, user_msg, DEV_USER, "like")  # on a user message: read as none

    response = await client.get(f"{PREFIX}/chats/{chat_id}/messages")
    assert response.status == 200
    items = (await response.json())["items"]
    assert [item["id"] for item in items] == [str(user_msg), str(assistant_msg), str(zero_tokens)]

    user, assistant, empty = items
    assert set(user) == ALWAYS
    assert user["role"] == "user" and user["content"] == "What is in these?"
    assert user["request_id"] == str(request_id) == assistant["request_id"]
    assert user["my_reaction"] is None
    assert dt.datetime.fromisoformat(user["created_at"]) == BASE
    assert user["attachments"] == [
        {
            "attachment_id": str(image),
            "kind": "image",
            "filename": "cat.png",
            "status": "ready",
            "img_thumbnail": {
                "content_type": "image/webp",
                "width": 64,
                "height": 48,
                "data_base64": base64.b64encode(webp).decode(),
            },
        },
        {"attachment_id": str(document), "kind": "document", "filename": "notes.md", "status": "uploaded"},
    ]

    assert set(assistant) == ALWAYS | {"model", "input_tokens", "output_tokens"}
    assert assistant["model"] == "gpt-4.1-mini"
    assert (assistant["input_tokens"], assistant["output_tokens"]) == (120, 45)
    assert assistant["attachments"] == []
    assert assistant["my_reaction"] == "dislike"

    # Token counts of 0 are omitted like nulls; another user's reaction is not the caller's.
    assert set(empty) == ALWAYS | {"model"}
    assert empty["my_reaction"] is None and empty["content"] == ""


async def test_hidden_rows_and_deleted_attachments_are_not_listed(
    client: ClientT, database: databases.Database
) -> None:
    chat = await create_chat(client)
    chat_id = chat["id"]
    visible = await seed_message(database, chat_id, created_at=BASE)
    await seed_message(database, chat_id, created_at=BASE, deleted=True)
    await seed_message(database, chat_id, role="system", request_id=None, created_at=BASE)
    gone = await seed_attachment(database, chat_id, deleted=True)
    await link_attachment(database, chat_id, visible, gone)
    other_chat = await create_chat(client)
    await seed_message(database, other_chat["id"], created_at=BASE)

    items = (await (await client.get(f"{PREFIX}/chats/{chat_id}/messages")).json())["items"]
    assert [item["id"] for item in items] == [str(visible)]
    assert items[0]["attachments"] == []


async def test_an_empty_chat_lists_no_messages(client: ClientT) -> None:
    chat = await create_chat(client)
    body = await (await client.get(f"{PREFIX}/chats/{chat['id']}/messages")).json()
    assert body == {"items": [], "page_info": {"next_cursor": None, "prev_cursor": None, "limit": 20}}


async def test_unknown_chat_and_invalid_id(client: ClientT) -> None:
    await expect_problem(await client.get(f"{PREFIX}/chats/{uuid.uuid4()}/messages"), 404, "chat_not_found")
    await expect_problem(await client.get(f"{PREFIX}/chats/nope/messages"), 400, "invalid_uuid")


@pytest.mark.parametrize("intruder", ["user", "tenant"])
async def test_another_identity_cannot_list_the_messages(
    client: ClientT, database: databases.Database, make_client: ClientFactory, intruder: str
) -> None:
    chat = await create_chat(client)
    await seed_message(database, chat["id"], content="secret")
    other = await make_client(**{f"{intruder}_id": uuid.uuid4()})
    body = await expect_problem(
        await other.get(f"{PREFIX}/chats/{chat['id']}/messages"), 404, "chat_not_found"
    )
    assert "secret" not in str(body)


async def test_a_deleted_chat_with_messages_is_not_found(
    client: ClientT, database: databases.Database
) -> None:
    # The owner check rides in the page query: messages still in the table must not make a page.
    chat = await create_chat(client)
    await seed_message(database, chat["id"], content="kept")
    assert (await client.get(f"{PREFIX}/chats/{chat['id']}/messages")).status == 200
    assert (await client.delete(f"{PREFIX}/chats/{chat['id']}")).status == 204
    body = await expect_problem(
        await client.get(f"{PREFIX}/chats/{chat['id']}/messages"), 404, "chat_not_found"
    )
    assert "kept" not in str(body)
