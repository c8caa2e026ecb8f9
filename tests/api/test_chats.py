"""Chat CRUD through HTTP: create / get / rename / soft delete, every status and field, bad input answered
as problem+json with nothing written, and the deletion transaction hook."""

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
from minichat_host.api.services import CHAT_SERVICES_KEY
from minichat_host.db.repos.chats import ChatRecord
from minichat_host.db.repos.common import Executor
from minichat_host.db.tables import chats

CHAT_KEYS = {"id", "model", "title", "is_temporary", "message_count", "created_at", "updated_at"}


def parse_ts(value: str) -> dt.datetime:
    assert value.endswith("Z"), value
    return dt.datetime.fromisoformat(value)


# --- create ------------------------------------------------------------------------------------------
async def test_create_returns_201_chat_detail_and_location(
    client: ClientT, database: databases.Database
) -> None:
    response = await client.post(f"{PREFIX}/chats", json={"title": "  Trip plans  ", "model": "gpt-4.1-mini"})
    assert response.status == 201
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == CHAT_KEYS
    assert body["title"] == "Trip plans"
    assert body["model"] == "gpt-4.1-mini"
    assert body["is_temporary"] is False
    assert body["message_count"] == 0
    assert parse_ts(body["created_at"]) == parse_ts(body["updated_at"])
    chat_id = uuid.UUID(body["id"])
    assert chat_id.version == 7
    assert response.headers["Location"] == f"{PREFIX}/chats/{chat_id}"

    row = await database.fetch_one(sa.select(chats).where(chats.c.id == chat_id))
    assert row is not None
    assert row["title"] == "Trip plans" and row["model"] == "gpt-4.1-mini" and row["deleted_at"] is None


async def test_create_without_title_omits_it_and_uses_the_default_model(client: ClientT) -> None:
    body = await create_chat(client)
    assert "title" not in body
    assert body["model"] == "gpt-4.1"  # the enabled is_default entry


async def test_create_with_an_empty_body_is_accepted(client: ClientT) -> None:
    response = await client.post(f"{PREFIX}/chats")
    assert response.status == 201
    assert (await response.json())["model"] == "gpt-4.1"


async def test_create_with_null_members_is_like_absent_members(client: ClientT) -> None:
    body = await create_chat(client, title=None, model=None)
    assert "title" not in body and body["model"] == "gpt-4.1"


async def test_default_model_falls_back_to_the_first_enabled_entry(make_client: Any) -> None:
    catalog = [
        {"id": "off-1", "provider_model_id": "m", "display_name": "Off", "enabled": False},
        {"id": "first.enabled", "provider_model_id": "m", "display_name": "First"},
        {"id": "second", "provider_model_id": "m", "display_name": "Second"},
    ]
    client = await make_client(catalog=catalog)
    assert (await create_chat(client))["model"] == "first.enabled"


async def test_title_of_exactly_255_characters_after_trim_is_accepted(client: ClientT) -> None:
    title = "x" * 255
    assert (await create_chat(client, title=f"   {title}\t\n"))["title"] == title


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"title": ""}, 400, "validation_error"),
        ({"title": "   \t\n"}, 400, "validation_error"),
        ({"title": "y" * 256}, 400, "validation_error"),
        ({"title": "z" * 100_000}, 400, "validation_error"),
        ({"title": "nul\x00byte"}, 400, "validation_error"),
        ({"model": ""}, 400, "invalid_model"),
        ({"model": "no-such-model"}, 400, "invalid_model"),
        ({"model": "retired-0.9"}, 400, "invalid_model"),
        ({"title": 123}, 422, "validation_error"),
        ({"model": ["gpt-4.1"]}, 422, "validation_error"),
        ({"title": "ok", "is_temporary": True}, 422, "validation_error"),
        ([], 422, "validation_error"),
        ("just a string", 422, "validation_error"),
    ],
)
async def test_create_rejects_bad_bodies_and_writes_nothing(
    client: ClientT, database: databases.Database, body: Any, status: int, code: str
) -> None:
    before = await table_snapshot(database)
    problem = await expect_problem(await client.post(f"{PREFIX}/chats", json=body), status, code)
    if code == "invalid_model":
        assert problem["title"] == "Invalid Model"
    if status == 400 and code == "validation_error":
        assert problem["title"] == "Validation Error"
    assert await table_snapshot(database) == before


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b'{"title": "x"', "application/json", 400, "invalid_json"),
        (b"\xff\xfe{}", "application/json", 400, "invalid_json"),
        (b'{"title": "\xed\xa0\x80"}', "application/json", 400, "invalid_json"),
        (b'{"title": "x"}', "text/plain", 415, "unsupported_media_type"),
        (b"title=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"null", "application/json", 422, "validation_error"),
    ],
)
async def test_create_rejects_malformed_payloads_and_writes_nothing(
    client: ClientT, database: databases.Database, data: bytes, content_type: str, status: int, code: str
) -> None:
    before = await table_snapshot(database)
    response = await client.post(f"{PREFIX}/chats", data=data, headers={"Content-Type": content_type})
    await expect_problem(response, status, code)
    assert await table_snapshot(database) == before


async def test_create_rejects_a_body_over_the_size_limit(
    client: ClientT, database: databases.Database
) -> None:
    before = await table_snapshot(database)
    huge = b'{"title": "' + b"a" * 2_000_000 + b'"}'
    response = await client.post(f"{PREFIX}/chats", data=huge, headers={"Content-Type": "application/json"})
    await expect_problem(response, 413, "payload_too_large")
    assert await table_snapshot(database) == before


# --- get ---------------------------------------------------------------------------------------------
async def test_get_returns_the_chat_with_its_visible_message_count(
    client: ClientT, database: databases.Database
) -> None:
    chat = await create_chat(client, title="Counting")
    await seed_message(database, chat["id"], role="user")
    await seed_message(database, chat["id"], role="assistant", model="gpt-4.1")
    await seed_message(database, chat["id"], role="user", deleted=True)
    await seed_message(database, chat["id"], role="system", request_id=None)

    response = await client.get(f"{PREFIX}/chats/{chat['id']}")
    assert response.status == 200
    body = await response.json()
    assert set(body) == CHAT_KEYS
    assert body["message_count"] == 2
    assert {k: body[k] for k in ("id", "model", "title", "created_at")} == {
        k: chat[k] for k in ("id", "model", "title", "created_at")
    }

    listed = await (await client.get(f"{PREFIX}/chats")).json()
    assert [item["message_count"] for item in listed["items"] if item["id"] == chat["id"]] == [2]


async def test_get_unknown_chat_is_404(client: ClientT) -> None:
    problem = await expect_problem(await client.get(f"{PREFIX}/chats/{uuid.uuid4()}"), 404, "chat_not_found")
    assert problem["title"] == "Chat Not Found"


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1234", "00000000-0000-0000-0000-00000000000g"])
async def test_invalid_chat_id_in_path_is_400(
    client: ClientT, database: databases.Database, method: str, bad_id: str
) -> None:
    before = await table_snapshot(database)
    response = await client.request(method, f"{PREFIX}/chats/{bad_id}", json={"title": "x"})
    await expect_problem(response, 400, "invalid_uuid")
    assert await table_snapshot(database) == before


# --- rename ------------------------------------------------------------------------------------------
async def test_rename_sets_the_title_and_updated_at(client: ClientT, database: databases.Database) -> None:
    chat = await create_chat(client, title="Old")
    await seed_message(database, chat["id"])
    await asyncio.sleep(0.002)  # so the new updated_at differs from created_at at microsecond precision
    response = await client.patch(f"{PREFIX}/chats/{chat['id']}", json={"title": "  New title "})
    assert response.status == 200
    body = await response.json()
    assert set(body) == CHAT_KEYS
    assert body["title"] == "New title"
    assert body["message_count"] == 1
    assert body["created_at"] == chat["created_at"]
    assert parse_ts(body["updated_at"]) > parse_ts(chat["updated_at"])
    again = await (await client.get(f"{PREFIX}/chats/{chat['id']}")).json()
    assert again["title"] == "New title" and again["updated_at"] == body["updated_at"]


async def test_listed_chats_are_the_chats_get_returns(client: ClientT, database: databases.Database) -> None:
    # The listing builds its items by position from the page's values (`chats_repo.ListedChatBuilder`), the
    # get by name from a record: both must say the same, field for field. Each chat's two timestamps
    # differ and one chat has no title, one has messages, one is temporary, so a misplaced value shows.
    titled = await create_chat(client, title="First")
    untitled = await create_chat(client)
    temporary = await create_chat(client, title="Temp")
    await database.execute(
        chats.update().where(chats.c.id == uuid.UUID(temporary["id"])).values(is_temporary=True)
    )
    await seed_message(database, titled["id"])
    await seed_message(database, titled["id"])
    for chat in (titled, untitled, temporary):
        await asyncio.sleep(0.002)
        renamed = await client.patch(f"{PREFIX}/chats/{chat['id']}", json={"title": f"Renamed {chat['id']}"})
        assert renamed.status == 200
    await client.patch(f"{PREFIX}/chats/{untitled['id']}", json={"title": "x"})
    listed = await (await client.get(f"{PREFIX}/chats")).json()
    assert len(listed["items"]) == 3
    for item in listed["items"]:
        single = await (await client.get(f"{PREFIX}/chats/{item['id']}")).json()
        assert item == single
        assert item["created_at"] != item["updated_at"]
    by_id = {item["id"]: item for item in listed["items"]}
    assert by_id[titled["id"]]["message_count"] == 2 and by_id[temporary["id"]]["is_temporary"] is True
    assert by_id[untitled["id"]]["title"] == "x" and by_id[untitled["id"]]["message_count"] == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 422, "validation_error"),
        ({"title": None}, 422, "validation_error"),
        ({"title": 5}, 422, "validation_error"),
        ({"title": "ok", "model": "gpt-4.1-mini"}, 422, "validation_error"),
        ({"title": ""}, 400, "validation_error"),
        ({"title": "  "}, 400, "validation_error"),
        ({"title": "t" * 256}, 400, "validation_error"),
    ],
)
async def test_rename_rejects_bad_bodies_and_changes_nothing(
    client: ClientT, database: databases.Database, body: dict[str, Any], status: int, code: str
) -> None:
    chat = await create_chat(client, title="Keep me")
    before = await table_snapshot(database)
    await expect_problem(await client.patch(f"{PREFIX}/chats/{chat['id']}", json=body), status, code)
    assert await table_snapshot(database) == before


async def test_rename_rejects_wrong_content_type_and_malformed_json(
    client: ClientT, database: databases.Database
) -> None:
    chat = await create_chat(client, title="Keep me")
    before = await table_snapshot(database)
    url = f"{PREFIX}/chats/{chat['id']}"
    await expect_problem(
        await client.patch(url, data=b'{"title":"x"}', headers={"Content-Type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    await expect_problem(
        await client.patch(url, data=b'{"title":', headers={"Content-Type": "application/json"}),
        400,
        "invalid_json",
    )
    await expect_problem(await client.patch(url), 415, "unsupported_media_type")
    assert await table_snapshot(database) == before


async def test_rename_unknown_or_deleted_chat_is_404(client: ClientT) -> None:
    await expect_problem(
        await client.patch(f"{PREFIX}/chats/{uuid.uuid4()}", json={"title": "x"}), 404, "chat_not_found"
    )
    chat = await create_chat(client)
    assert (await client.delete(f"{PREFIX}/chats/{chat['id']}")).status == 204
    await expect_problem(
        await client.patch(f"{PREFIX}/chats/{chat['id']}", json={"title": "x"}), 404, "chat_not_found"
    )


# --- delete ------------------------------------------------------------------------------------------
async def test_delete_is_a_soft_delete_with_an_empty_204(
    client: ClientT, database: databases.Database
) -> None:
    chat = await create_chat(client, title="Doomed")
    keep = await create_chat(client, title="Stays")
    response = await client.delete(f"{PREFIX}/chats/{chat['id']}")
    assert response.status == 204
    assert await response.read() == b""

    row = await database.fetch_one(sa.select(chats).where(chats.c.id == uuid.UUID(chat["id"])))
    assert row is not None and row["deleted_at"] is not None  # still there, marked deleted

    await expect_problem(await client.get(f"{PREFIX}/chats/{chat['id']}"), 404, "chat_not_found")
    await expect_problem(await client.delete(f"{PREFIX}/chats/{chat['id']}"), 404, "chat_not_found")
    await expect_problem(await client.get(f"{PREFIX}/chats/{chat['id']}/messages"), 404, "chat_not_found")
    listed = await (await client.get(f"{PREFIX}/chats")).json()
    assert [item["id"] for item in listed["items"]] == [keep["id"]]


async def test_delete_unknown_chat_is_404(client: ClientT) -> None:
    await expect_problem(await client.delete(f"{PREFIX}/chats/{uuid.uuid4()}"), 404, "chat_not_found")


async def test_deletion_hooks_run_inside_the_delete_transaction(
    client: ClientT, database: databases.Database
) -> None:
    service = client.app[CHAT_SERVICES_KEY].chats
    seen: list[tuple[uuid.UUID, Any]] = []

    async def record(conn: Executor, chat: ChatRecord) -> None:
        # The hook sees the chat already marked deleted through the transaction's connection.
        deleted_at = await conn.fetch_val(sa.select(chats.c.deleted_at).where(chats.c.id == chat.id))
        seen.append((chat.id, deleted_at))

    service.add_deletion_hook(record)
    chat = await create_chat(client, title="Hooked")
    assert (await client.delete(f"{PREFIX}/chats/{chat['id']}")).status == 204
    assert len(seen) == 1
    assert seen[0][0] == uuid.UUID(chat["id"]) and seen[0][1] is not None


async def test_a_failing_deletion_hook_rolls_the_deletion_back(
    client: ClientT, database: databases.Database
) -> None:
    service = client.app[CHAT_SERVICES_KEY].chats

    async def fail(conn: Executor, chat: ChatRecord) -> None:
        raise RuntimeError("outbox unavailable")

    service.add_deletion_hook(fail)
    chat = await create_chat(client, title="Survivor")
    before = await table_snapshot(database)
    await expect_problem(await client.delete(f"{PREFIX}/chats/{chat['id']}"), 500, "internal_error")
    assert await table_snapshot(database) == before
    assert (await client.get(f"{PREFIX}/chats/{chat['id']}")).status == 200


# --- isolation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("intruder", ["user", "tenant"])
async def test_another_identity_sees_404_and_changes_nothing(
    client: ClientT, database: databases.Database, make_client: ClientFactory, intruder: str
) -> None:
    other = await make_client(**{f"{intruder}_id": uuid.uuid4()})
    chat = await create_chat(client, title="Private")
    before = await table_snapshot(database)
    url = f"{PREFIX}/chats/{chat['id']}"
    for response in (
        await other.get(url),
        await other.patch(url, json={"title": "Hijacked"}),
        await other.delete(url),
    ):
        body = await expect_problem(response, 404, "chat_not_found")
        assert "Private" not in str(body)
    listed = await (await other.get(f"{PREFIX}/chats")).json()
    assert listed["items"] == []
    assert await table_snapshot(database) == before
    assert (await (await client.get(url)).json())["title"] == "Private"


async def test_json_with_a_charset_parameter_is_accepted(client: ClientT) -> None:
    response = await client.post(
        f"{PREFIX}/chats",
        data='{"title": "Ünïcode ✓"}'.encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status == 201
    assert (await response.json())["title"] == "Ünïcode ✓"


async def test_unsupported_method_is_a_405_problem(client: ClientT) -> None:
    response = await client.put(f"{PREFIX}/chats", json={})
    await expect_problem(response, 405, "method_not_allowed")


async def test_concurrent_deletes_of_one_chat_give_one_204(client: ClientT) -> None:
    chat = await create_chat(client)
    responses = await asyncio.gather(*(client.delete(f"{PREFIX}/chats/{chat['id']}") for _ in range(6)))
    assert sorted(r.status for r in responses) == [204] + [404] * 5
