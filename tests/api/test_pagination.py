"""Keyset pagination of both lists: pages in both directions with ties in the order key, `limit` rules,
`$orderby` / `$filter`, and cursors that are undecodable, tampered with or from another listing."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

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
    seed_message,
    set_chat_updated_at,
)
from minichat_host.db.tables import chats

BASE = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


async def get_page(client: ClientT, url: str, **params: Any) -> dict[str, Any]:
    response = await client.get(url, params={k: str(v) for k, v in params.items()})
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    assert set(body) == {"items", "page_info"}
    assert set(body["page_info"]) == {"next_cursor", "prev_cursor", "limit"}
    return body


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


async def walk_forward(client: ClientT, url: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    pages = [await get_page(client, url, limit=limit, **params)]
    while pages[-1]["page_info"]["next_cursor"] is not None:
        assert len(pages) < 50, "pagination does not terminate"
        pages.append(await get_page(client, url, limit=limit, cursor=pages[-1]["page_info"]["next_cursor"]))
    return pages


async def walk_backward(client: ClientT, url: str, last: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    pages = [last]
    while pages[-1]["page_info"]["prev_cursor"] is not None:
        assert len(pages) < 50, "pagination does not terminate"
        pages.append(await get_page(client, url, limit=limit, cursor=pages[-1]["page_info"]["prev_cursor"]))
    return list(reversed(pages))


def assert_pages(pages: list[dict[str, Any]], expected: list[str], limit: int) -> None:
    assert [ids(page) for page in pages] == [expected[i : i + limit] for i in range(0, len(expected), limit)]
    for index, page in enumerate(pages):
        assert page["page_info"]["limit"] == limit
        assert (page["page_info"]["prev_cursor"] is None) == (index == 0)
        assert (page["page_info"]["next_cursor"] is None) == (index == len(pages) - 1)


# --- chats -------------------------------------------------------------------------------------------
# Offsets (seconds from BASE) with ties, so the id tiebreaker decides within a group.
CHAT_OFFSETS = [0, 5, 5, 5, 9, 9, 12, 5]


async def make_chats(client: ClientT, database: databases.Database) -> list[tuple[dt.datetime, str]]:
    made: list[tuple[dt.datetime, str]] = []
    for offset in CHAT_OFFSETS:
        chat = await create_chat(client, title=f"chat {offset}")
        when = BASE + dt.timedelta(seconds=offset)
        await set_chat_updated_at(database, chat["id"], when)
        made.append((when, chat["id"]))
    return made


def newest_first(made: list[tuple[dt.datetime, str]]) -> list[str]:
    return [chat_id for _, chat_id in sorted(made, key=lambda p: (p[0], uuid.UUID(p[1])), reverse=True)]


async def test_chats_pages_forward_and_backward_with_ties(
    client: ClientT, database: databases.Database
) -> None:
    made = await make_chats(client, database)
    deleted = await create_chat(client, title="deleted")
    assert (await client.delete(f"{PREFIX}/chats/{deleted['id']}")).status == 204
    expected = newest_first(made)
    url = f"{PREFIX}/chats"
    for limit in (1, 3, 8, 100):
        forward = await walk_forward(client, url, limit)
        assert_pages(forward, expected, limit)
        backward = await walk_backward(client, url, forward[-1], limit)
        assert [ids(page) for page in backward] == [ids(page) for page in forward]
        assert_pages(backward, expected, limit)


async def test_chats_next_cursor_of_a_prev_page_goes_forward_again(
    client: ClientT, database: databases.Database
) -> None:
    expected = newest_first(await make_chats(client, database))
    url = f"{PREFIX}/chats"
    first = await get_page(client, url, limit=3)
    second = await get_page(client, url, limit=3, cursor=first["page_info"]["next_cursor"])
    back = await get_page(client, url, limit=3, cursor=second["page_info"]["prev_cursor"])
    assert ids(back) == expected[:3]
    again = await get_page(client, url, limit=3, cursor=back["page_info"]["next_cursor"])
    assert ids(again) == expected[3:6]


async def test_chats_orderby_ascending_and_its_cursor(client: ClientT, database: databases.Database) -> None:
    expected = list(reversed(newest_first(await make_chats(client, database))))
    url = f"{PREFIX}/chats"
    pages = [await get_page(client, url, limit=3, **{"$orderby": "updated_at asc"})]
    while pages[-1]["page_info"]["next_cursor"] is not None:
        # The cursor carries the order: no $orderby on later pages.
        pages.append(await get_page(client, url, limit=3, cursor=pages[-1]["page_info"]["next_cursor"]))
    assert_pages(pages, expected, 3)
    # Repeating the same $orderby with the cursor is accepted; a different one is not.
    cursor = pages[0]["page_info"]["next_cursor"]
    same = await get_page(client, url, limit=3, cursor=cursor, **{"$orderby": "updated_at asc,id asc"})
    assert ids(same) == expected[3:6]
    response = await client.get(url, params={"cursor": cursor, "$orderby": "updated_at desc"})
    await expect_problem(response, 422, "invalid_cursor")


async def test_chats_explicit_default_orderby(client: ClientT, database: databases.Database) -> None:
    expected = newest_first(await make_chats(client, database))
    for orderby in ("updated_at desc", "updated_at DESC, id desc", " updated_at  desc ,id desc"):
        assert ids(await get_page(client, f"{PREFIX}/chats", limit=100, **{"$orderby": orderby})) == expected


async def test_empty_page_after_deletions_leads_back(client: ClientT, database: databases.Database) -> None:
    made = await make_chats(client, database)
    expected = newest_first(made)
    url = f"{PREFIX}/chats"
    first = await get_page(client, url, limit=4)
    for chat_id in expected[4:]:
        assert (await client.delete(f"{PREFIX}/chats/{chat_id}")).status == 204
    empty = await get_page(client, url, limit=4, cursor=first["page_info"]["next_cursor"])
    assert empty["items"] == []
    assert empty["page_info"]["next_cursor"] is None
    assert empty["page_info"]["prev_cursor"] is not None
    back = await get_page(client, url, limit=4, cursor=empty["page_info"]["prev_cursor"])
    assert ids(back) == expected[:4]  # the row at the cursor position is not skipped
    assert back["page_info"]["prev_cursor"] is None
    assert back["page_info"]["next_cursor"] is None


async def test_default_limit_is_20_and_large_limits_are_clamped_to_100(
    client: ClientT, database: databases.Database
) -> None:
    now = dt.datetime.now(dt.UTC)
    for index in range(101):
        await database.execute(
            chats.insert().values(
                id=uuid.uuid4(),
                tenant_id=DEV_TENANT,
                user_id=DEV_USER,
                model="gpt-4.1",
                title=f"bulk {index}",
                is_temporary=False,
                created_at=now,
                updated_at=now + dt.timedelta(microseconds=index),
            )
        )
    url = f"{PREFIX}/chats"
    page = await get_page(client, url)
    assert page["page_info"]["limit"] == 20 and len(page["items"]) == 20
    assert (await get_page(client, url, limit="007"))["page_info"]["limit"] == 7
    assert page["page_info"]["next_cursor"] is not None
    for limit in ("101", "1000", "0100000", "9" * 5000):
        page = await get_page(client, url, limit=limit)
        assert page["page_info"]["limit"] == 100 and len(page["items"]) == 100
    tail = await get_page(client, url, limit=100, cursor=page["page_info"]["next_cursor"])
    assert len(tail["items"]) == 1 and tail["page_info"]["next_cursor"] is None


@pytest.mark.parametrize(
    "limit", ["0", "000", "-1", "-0", "--5", "abc", "1.5", "", " ", "+5", "1e3", "٣", "0x10"]
)
async def test_invalid_limit_is_422(client: ClientT, limit: str) -> None:
    await expect_problem(await client.get(f"{PREFIX}/chats", params={"limit": limit}), 422, "invalid_limit")


@pytest.mark.parametrize(
    "orderby",
    ["title", "title desc", "updated_at sideways", "updated_at desc,id asc", "id desc", "a,b,c", ""],
)
async def test_unsupported_orderby_is_422(client: ClientT, orderby: str) -> None:
    response = await client.get(f"{PREFIX}/chats", params={"$orderby": orderby})
    await expect_problem(response, 422, "invalid_orderby")


async def test_filter_is_not_supported(client: ClientT) -> None:
    response = await client.get(f"{PREFIX}/chats", params={"$filter": "title eq 'x'"})
    await expect_problem(response, 422, "invalid_filter")


async def test_an_empty_cursor_means_the_first_page(client: ClientT) -> None:
    chat = await create_chat(client)
    assert ids(await get_page(client, f"{PREFIX}/chats", cursor="")) == [chat["id"]]


# --- cursor validation -------------------------------------------------------------------------------
def reencode(cursor: str, **changes: Any) -> str:
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    payload.update(changes)
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()


async def test_tampered_or_foreign_cursors_are_422(
    client: ClientT, database: databases.Database, make_client: ClientFactory
) -> None:
    await make_chats(client, database)
    url = f"{PREFIX}/chats"
    cursor = (await get_page(client, url, limit=2))["page_info"]["next_cursor"]
    assert cursor is not None
    payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    bad = [
        "not a cursor!",
        "%%%",
        cursor[:-3],
        cursor + "AAAA",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b"[1,2,3]").decode(),
        reencode(cursor, v=2),
        reencode(cursor, s="0123456789abcdef"),
        reencode(cursor, o="title desc"),
        reencode(cursor, d="sideways"),
        reencode(cursor, k=["yesterday", payload["k"][1]]),
        reencode(cursor, k=["2026-03-01T12:00:00", payload["k"][1]]),  # no time zone
        reencode(cursor, k=[payload["k"][0], "not-a-uuid"]),
        reencode(cursor, k=[payload["k"][0]]),
        reencode(cursor, extra=1),
        "A" * 600,
    ]
    for token in bad:
        response = await client.get(url, params={"cursor": token})
        await expect_problem(response, 422, "invalid_cursor")

    # A chats cursor does not fit the messages listing, nor another user's chats listing.
    chat = await create_chat(client)
    response = await client.get(f"{PREFIX}/chats/{chat['id']}/messages", params={"cursor": cursor})
    await expect_problem(response, 422, "invalid_cursor")
    other = await make_client(user_id=uuid.uuid4())
    await expect_problem(await other.get(url, params={"cursor": cursor}), 422, "invalid_cursor")


# --- messages ----------------------------------------------------------------------------------------
MESSAGE_OFFSETS = [0, 3, 3, 3, 7, 7, 1, 11, 3]


async def make_messages(database: databases.Database, chat_id: str) -> list[str]:
    """Visible messages with ties in created_at, plus hidden rows; returns the visible ids oldest first."""
    visible: list[tuple[dt.datetime, uuid.UUID]] = []
    for index, offset in enumerate(MESSAGE_OFFSETS):
        when = BASE + dt.timedelta(seconds=offset)
        role = "assistant" if index % 2 else "user"
        visible.append((when, await seed_message(database, chat_id, role=role, created_at=when)))
    await seed_message(database, chat_id, created_at=BASE + dt.timedelta(seconds=3), deleted=True)
    await seed_message(database, chat_id, role="system", request_id=None, created_at=BASE)
    return [str(message_id) for _, message_id in sorted(visible)]


async def test_messages_pages_forward_and_backward_with_ties(
    client: ClientT, database: databases.Database
) -> None:
    chat = await create_chat(client)
    other_chat = await create_chat(client)
    expected = await make_messages(database, chat["id"])
    await make_messages(database, other_chat["id"])
    url = f"{PREFIX}/chats/{chat['id']}/messages"
    for limit in (1, 2, 4, 9, 20):
        forward = await walk_forward(client, url, limit)
        assert_pages(forward, expected, limit)
        backward = await walk_backward(client, url, forward[-1], limit)
        assert_pages(backward, expected, limit)


async def test_messages_default_limit_and_descending_order(
    client: ClientT, database: databases.Database
) -> None:
    chat = await create_chat(client)
    expected = await make_messages(database, chat["id"])
    url = f"{PREFIX}/chats/{chat['id']}/messages"
    page = await get_page(client, url)
    assert page["page_info"] == {"next_cursor": None, "prev_cursor": None, "limit": 20}
    assert ids(page) == expected
    pages = [await get_page(client, url, limit=4, **{"$orderby": "created_at desc"})]
    while pages[-1]["page_info"]["next_cursor"] is not None:
        pages.append(await get_page(client, url, limit=4, cursor=pages[-1]["page_info"]["next_cursor"]))
    assert_pages(pages, list(reversed(expected)), 4)


async def test_messages_cursor_of_one_chat_is_rejected_on_another(
    client: ClientT, database: databases.Database
) -> None:
    first = await create_chat(client)
    second = await create_chat(client)
    await make_messages(database, first["id"])
    await make_messages(database, second["id"])
    cursor = (await get_page(client, f"{PREFIX}/chats/{first['id']}/messages", limit=2))["page_info"][
        "next_cursor"
    ]
    response = await client.get(f"{PREFIX}/chats/{second['id']}/messages", params={"cursor": cursor})
    await expect_problem(response, 422, "invalid_cursor")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "x"}, "invalid_limit"),
        ({"$orderby": "updated_at desc"}, "invalid_orderby"),
        ({"$filter": "role eq 'user'"}, "invalid_filter"),
        ({"cursor": "garbage"}, "invalid_cursor"),
    ],
)
async def test_messages_query_errors(client: ClientT, params: dict[str, str], code: str) -> None:
    chat = await create_chat(client)
    await expect_problem(await client.get(f"{PREFIX}/chats/{chat['id']}/messages", params=params), 422, code)
