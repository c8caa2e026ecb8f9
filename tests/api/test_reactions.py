"""`PUT` / `DELETE …/messages/{msg_id}/reaction`: upsert, removal, every error status, nothing written on
a rejected request, and isolation."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import databases
import pytest
import sqlalchemy as sa

from api.helpers import (
    PREFIX,
    ClientFactory,
    ClientT,
    create_chat,
    expect_problem,
    seed_message,
    table_snapshot,
)
from minichat_host.db.tables import message_reactions


async def chat_with_turn(client: ClientT, database: databases.Database) -> tuple[str, uuid.UUID, uuid.UUID]:
    chat = await create_chat(client)
    request_id = uuid.uuid4()
    user_msg = await seed_message(database, chat["id"], role="user", request_id=request_id)
    assistant_msg = await seed_message(
        database, chat["id"], role="assistant", request_id=request_id, model="m"
    )
    return chat["id"], user_msg, assistant_msg


def reaction_url(chat_id: str, message_id: uuid.UUID | str) -> str:
    return f"{PREFIX}/chats/{chat_id}/messages/{message_id}/reaction"


async def my_reaction(client: ClientT, chat_id: str, message_id: uuid.UUID) -> Any:
    items = (await (await client.get(f"{PREFIX}/chats/{chat_id}/messages")).json())["items"]
    return next(item["my_reaction"] for item in items if item["id"] == str(message_id))


async def test_like_then_dislike_then_remove(client: ClientT, database: databases.Database) -> None:
    chat_id, _, assistant_msg = await chat_with_turn(client, database)
    url = reaction_url(chat_id, assistant_msg)

    response = await client.put(url, json={"reaction": "like"})
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"message_id", "reaction", "created_at"}
    assert body["message_id"] == str(assistant_msg) and body["reaction"] == "like"
    dt.datetime.fromisoformat(body["created_at"])
    assert await my_reaction(client, chat_id, assistant_msg) == "like"

    # Repeating the same value is idempotent (same created_at); a new value replaces it.
    again = await (await client.put(url, json={"reaction": "like"})).json()
    assert again == body
    response = await client.put(url, json={"reaction": "dislike"})
    assert response.status == 200
    assert (await response.json())["reaction"] == "dislike"
    assert await my_reaction(client, chat_id, assistant_msg) == "dislike"
    rows = await database.fetch_all(sa.select(message_reactions))
    assert [(r["message_id"], r["reaction"]) for r in rows] == [(assistant_msg, "dislike")]

    response = await client.delete(url)
    assert response.status == 204 and await response.read() == b""
    assert await my_reaction(client, chat_id, assistant_msg) is None
    assert await database.fetch_all(sa.select(message_reactions)) == []

    # Removing when there is none is still 204.
    response = await client.delete(url)
    assert response.status == 204 and await response.read() == b""


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"reaction": "love"}, 400, "validation_error"),
        ({"reaction": "LIKE"}, 400, "validation_error"),
        ({"reaction": ""}, 400, "validation_error"),
        ({"reaction": None}, 422, "validation_error"),
        ({"reaction": 1}, 422, "validation_error"),
        ({}, 422, "validation_error"),
        ({"reaction": "like", "note": "x"}, 422, "validation_error"),
        (["like"], 422, "validation_error"),
    ],
)
async def test_bad_reaction_bodies_change_nothing(
    client: ClientT, database: databases.Database, body: Any, status: int, code: str
) -> None:
    chat_id, _, assistant_msg = await chat_with_turn(client, database)
    before = await table_snapshot(database)
    await expect_problem(await client.put(reaction_url(chat_id, assistant_msg), json=body), status, code)
    assert await table_snapshot(database) == before


async def test_malformed_reaction_payloads(client: ClientT, database: databases.Database) -> None:
    chat_id, _, assistant_msg = await chat_with_turn(client, database)
    url = reaction_url(chat_id, assistant_msg)
    before = await table_snapshot(database)
    await expect_problem(
        await client.put(url, data=b'{"reaction":', headers={"Content-Type": "application/json"}),
        400,
        "invalid_json",
    )
    await expect_problem(
        await client.put(url, data=b'{"reaction":"like"}', headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert await table_snapshot(database) == before


async def test_reaction_on_a_user_message_is_400(client: ClientT, database: databases.Database) -> None:
    chat_id, user_msg, _ = await chat_with_turn(client, database)
    before = await table_snapshot(database)
    problem = await expect_problem(
        await client.put(reaction_url(chat_id, user_msg), json={"reaction": "like"}),
        400,
        "invalid_reaction_target",
    )
    assert problem["title"] == "Invalid Reaction Target"
    assert await table_snapshot(database) == before


async def test_missing_deleted_hidden_or_foreign_messages_are_404(
    client: ClientT, database: databases.Database
) -> None:
    chat_id, _, _ = await chat_with_turn(client, database)
    other_chat_id, _, other_assistant = await chat_with_turn(client, database)
    deleted = await seed_message(database, chat_id, role="assistant", deleted=True)
    hidden = await seed_message(database, chat_id, role="assistant", request_id=None)
    before = await table_snapshot(database)
    for message_id in (uuid.uuid4(), deleted, hidden, other_assistant):
        url = reaction_url(chat_id, message_id)
        problem = await expect_problem(
            await client.put(url, json={"reaction": "like"}), 404, "message_not_found"
        )
        assert problem["title"] == "Message Not Found"
        await expect_problem(await client.delete(url), 404, "message_not_found")
    assert await table_snapshot(database) == before
    assert other_chat_id != chat_id


async def test_unknown_chat_and_invalid_ids(client: ClientT, database: databases.Database) -> None:
    chat_id, _, assistant_msg = await chat_with_turn(client, database)
    before = await table_snapshot(database)
    unknown = reaction_url(str(uuid.uuid4()), assistant_msg)
    await expect_problem(await client.put(unknown, json={"reaction": "like"}), 404, "chat_not_found")
    await expect_problem(await client.delete(unknown), 404, "chat_not_found")
    for url in (reaction_url("bad", assistant_msg), reaction_url(chat_id, "also-bad")):
        await expect_problem(await client.put(url, json={"reaction": "like"}), 400, "invalid_uuid")
        await expect_problem(await client.delete(url), 400, "invalid_uuid")
    assert await table_snapshot(database) == before


async def test_reactions_in_a_deleted_chat_are_404(client: ClientT, database: databases.Database) -> None:
    chat_id, _, assistant_msg = await chat_with_turn(client, database)
    assert (await client.delete(f"{PREFIX}/chats/{chat_id}")).status == 204
    url = reaction_url(chat_id, assistant_msg)
    await expect_problem(await client.put(url, json={"reaction": "like"}), 404, "chat_not_found")


@pytest.mark.parametrize("intruder", ["user", "tenant"])
async def test_another_identity_cannot_react(
    client: ClientT, database: databases.Database, make_client: ClientFactory, intruder: str
) -> None:
    chat_id, _, assistant_msg = await chat_with_turn(client, database)
    assert (await client.put(reaction_url(chat_id, assistant_msg), json={"reaction": "like"})).status == 200
    before = await table_snapshot(database)
    other = await make_client(**{f"{intruder}_id": uuid.uuid4()})
    url = reaction_url(chat_id, assistant_msg)
    await expect_problem(await other.put(url, json={"reaction": "dislike"}), 404, "chat_not_found")
    await expect_problem(await other.delete(url), 404, "chat_not_found")
    assert await table_snapshot(database) == before
    assert await my_reaction(client, chat_id, assistant_msg) == "like"


async def test_concurrent_reactions_leave_one_row(client: ClientT, database: databases.Database) -> None:
    chat_id, _, assistant_msg = await chat_with_turn(client, database)
    url = reaction_url(chat_id, assistant_msg)
    values = ["like", "dislike"] * 5
    responses = await asyncio.gather(*(client.put(url, json={"reaction": value}) for value in values))
    assert [r.status for r in responses] == [200] * len(values)
    rows = await database.fetch_all(sa.select(message_reactions))
    assert len(rows) == 1 and rows[0]["reaction"] in ("like", "dislike")
    assert await my_reaction(client, chat_id, assistant_msg) == rows[0]["reaction"]
