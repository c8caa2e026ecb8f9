"""SQLite's JSON form of a listing's rows (db/repos/json_rows.py): the same values as the plain statement's,
type for type, for every listing and page shape; a value the JSON form cannot decode goes to the plain
statement; a column without a JSON form leaves the listing on the plain statement."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import databases
import pytest
import sqlalchemy as sa

from minichat_host.db.prepared import Prepared
from minichat_host.db.repos import chats as chats_repo
from minichat_host.db.repos import messages as messages_repo
from minichat_host.db.repos import quota_ledger
from minichat_host.db.repos import turns as turns_repo
from minichat_host.db.repos.json_rows import json_rows
from minichat_host.db.repos.pagination import KeysetListing, KeysetOrder, _keyset_statements
from minichat_host.db.tables import (
    attachments,
    chats,
    message_attachments,
    message_reactions,
    messages,
    quota_usage,
    thread_summaries,
)
from minichat_host.domain.models import Period

SQLITE_ONLY = pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)

BASE = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
# Text JSON has to escape, and text that looks like JSON.
TITLES = [
    "plain",
    'a "quoted" title with a \\ backslash',
    "ünïcödé, 漢字 and an emoji 🎉",
    "control \x01 characters\n\tand a newline",
    "",
    '{"looks": ["like", "json"]}',
    None,
]


async def _populate(database: databases.Database) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    tenant, user = uuid.uuid4(), uuid.uuid4()
    chat_ids = []
    for number, title in enumerate(TITLES):
        chat_id = uuid.uuid4()
        chat_ids.append(chat_id)
        await database.execute(
            chats.insert().values(
                id=chat_id,
                tenant_id=tenant,
                user_id=user,
                model=f"model-{number}",
                title=title,
                is_temporary=number % 2 == 1,
                created_at=BASE + dt.timedelta(seconds=number),
                # No microseconds on some: still six digits stored, and read back the same.
                updated_at=BASE + dt.timedelta(hours=1, microseconds=0 if number % 3 else 999_999 - number),
            )
        )
    chat_id = chat_ids[0]
    attachment_id = uuid.uuid4()
    await database.execute(
        attachments.insert().values(
            id=attachment_id,
            tenant_id=tenant,
            chat_id=chat_id,
            uploaded_by_user_id=user,
            filename="a.txt",
            content_type="text/plain",
            status="ready",
            attachment_kind="document",
            created_at=BASE,
            updated_at=BASE,
        )
    )
    for number in range(6):
        message_id = uuid.uuid4()
        await database.execute(
            messages.insert().values(
                id=message_id,
                tenant_id=tenant,
                chat_id=chat_id,
                request_id=uuid.uuid4(),
                role="user" if number % 2 == 0 else "assistant",
                content=TITLES[number] or "",
                model=None if number % 2 == 0 else "model",
                input_tokens=0 if number % 2 == 0 else 10 + number,
                output_tokens=0 if number % 2 == 0 else 2**40 + number,
                created_at=BASE + dt.timedelta(microseconds=number),
            )
        )
        if number in (1, 2):
            await database.execute(
                message_reactions.insert().values(
                    id=uuid.uuid4(),
                    tenant_id=tenant,
                    message_id=message_id,
                    user_id=user,
                    reaction="like" if number == 1 else "dislike",
                    created_at=BASE,
                )
            )
        if number == 3:
            await database.execute(
                message_attachments.insert().values(
                    tenant_id=tenant,
                    chat_id=chat_id,
                    message_id=message_id,
                    attachment_id=attachment_id,
                    created_at=BASE,
                )
            )
    return tenant, user, chat_id


def _plain(prepared: Prepared) -> Prepared:
    return Prepared(prepared.statement, f"{prepared.name} (plain)")


def _typed(rows: Sequence[Sequence[Any]]) -> list[list[tuple[type[Any], Any]]]:
    """Each value with its exact type: equal values of other types (1 and True, a naive datetime) differ."""
    return [[(type(value), value) for value in row] for row in rows]


def _shapes(
    listing: KeysetListing, orders: Sequence[KeysetOrder]
) -> list[tuple[KeysetOrder, bool, bool, bool]]:
    return [
        (order, forward, inclusive, has_cursor)
        for order in orders
        for forward in (True, False)
        for has_cursor in (False, True)
        for inclusive in ((False, True) if has_cursor else (False,))
    ]


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("listing", "orders"),
    [
        (chats_repo._LISTING, [chats_repo.ORDER_UPDATED_DESC, chats_repo.ORDER_UPDATED_ASC]),
        (messages_repo._LISTING, [messages_repo.ORDER_CREATED_ASC]),
        (messages_repo._OWNED_LISTING, [messages_repo.ORDER_CREATED_ASC]),
    ],
    ids=["chats", "messages", "owned messages"],
)
async def test_json_rows_are_the_plain_statements_values(
    database: databases.Database,
    caplog: pytest.LogCaptureFixture,
    listing: KeysetListing,
    orders: Sequence[KeysetOrder],
) -> None:
    tenant, user, chat_id = await _populate(database)
    scope: dict[str, Any] = {"tenant_id": tenant, "user_id": user, "chat_id": chat_id}
    if listing is messages_repo._LISTING:
        del scope["user_id"]
    if listing is chats_repo._LISTING:
        del scope["chat_id"]
    caplog.set_level(logging.DEBUG, logger="minichat_host.db.engine")
    for order, forward, inclusive, has_cursor in _shapes(listing, orders):
        prepared, _ = _keyset_statements(listing, order, forward, inclusive, has_cursor)
        assert prepared.json_rows is not None
        values = dict(scope, page_limit=50)
        if has_cursor:  # a position in the middle of the listing
            first, _ = _keyset_statements(listing, order, True, False, False)
            middle = (await _plain(first).fetch_values(database, **values))[2]
            names = [column.name for column in listing.columns]
            values["k_primary"] = middle[names.index(order.primary.name)]
            values["k_tiebreak"] = middle[names.index(order.tiebreak.name)]
        expected = await _plain(prepared).fetch_values(database, **values)
        read = await prepared.fetch_values(database, **values)
        assert len(expected) >= 2
        assert _typed(read) == _typed(expected), (order.name, forward, inclusive, has_cursor)
        # The JSON statement is what ran (compiled on first use), and it needed no help.
        assert ("sqlite", None) in prepared.json_rows.prepared._forms
    assert "read by the plain statement" not in caplog.text


@SQLITE_ONLY
async def test_the_json_rows_of_the_owners_listing_carry_their_extras(database: databases.Database) -> None:
    tenant, user, chat_id = await _populate(database)
    prepared, _ = _keyset_statements(
        messages_repo._OWNED_LISTING, messages_repo.ORDER_CREATED_ASC, True, False, False
    )
    scope = {"tenant_id": tenant, "chat_id": chat_id}
    rows = await prepared.fetch_values(database, user_id=user, page_limit=9, **scope)
    assert [row[-2:] for row in rows] == [
        (None, False),
        ("like", False),
        ("dislike", False),
        (None, True),
        (None, False),
        (None, False),
    ]
    assert [type(row[5]) for row in rows] == [int] * 6 and rows[1][6] == 2**40 + 1
    # Another owner: the folded owner check leaves the page empty.
    assert not await prepared.fetch_values(database, user_id=uuid.uuid4(), page_limit=9, **scope)


@SQLITE_ONLY
async def test_a_value_the_json_form_cannot_decode_is_read_by_the_plain_statement(
    database: databases.Database, caplog: pytest.LogCaptureFixture
) -> None:
    tenant, user, _ = await _populate(database)
    # Written by another tool: a timestamp with its offset, and a boolean stored as 2.
    await database.execute(
        sa.text(
            "UPDATE chats SET updated_at = '2026-03-01T11:00:00.5+02:00', is_temporary = 2"
            " WHERE title = 'plain'"
        )
    )
    prepared, _ = _keyset_statements(chats_repo._LISTING, chats_repo.ORDER_UPDATED_DESC, True, False, False)
    caplog.set_level(logging.DEBUG, logger="minichat_host.db.engine")
    read = await prepared.fetch_values(database, tenant_id=tenant, user_id=user, page_limit=50)
    assert "read by the plain statement" in caplog.text
    expected = await _plain(prepared).fetch_values(database, tenant_id=tenant, user_id=user, page_limit=50)
    assert _typed(read) == _typed(expected)
    odd = next(row for row in read if row[2] == "plain")
    assert odd[3] is True and odd[5] == dt.datetime(2026, 3, 1, 9, 0, 0, 500_000, tzinfo=dt.UTC)
    # The page's service answer is the same as ever.
    page = await chats_repo.list_page(
        database,
        tenant,
        user,
        order=chats_repo.ORDER_UPDATED_DESC,
        limit=50,
        cursor=None,
        build=chats_repo.counted_chats(tenant, user),
    )
    assert [item.chat.title for item in page.items] == [row[2] for row in expected]


def test_a_column_without_a_json_form_leaves_the_plain_statement() -> None:
    with_a_float = sa.select(chats.c.id, sa.literal_column("1.5", sa.Float).label("ratio")).select_from(chats)
    assert json_rows(with_a_float, "with a float") is None
    assert json_rows(sa.select(chats.c.id), "ids") is not None


@SQLITE_ONLY
@pytest.mark.parametrize("for_update", [False, True])
async def test_the_quota_rows_read_as_json_are_the_plain_statements(
    database: databases.Database, caplog: pytest.LogCaptureFixture, for_update: bool
) -> None:
    tenant, user = uuid.uuid4(), uuid.uuid4()
    day, month = dt.date(2026, 3, 1), dt.date(2026, 3, 1)
    for period_type, start in (("daily", day), ("monthly", month), ("daily", dt.date(2026, 2, 28))):
        for number, bucket in enumerate(("total", "premium")):
            await database.execute(
                quota_usage.insert().values(
                    id=uuid.uuid4(),
                    tenant_id=tenant,
                    user_id=user,
                    period_type=period_type,
                    period_start=start,
                    bucket=bucket,
                    spent_credits_micro=2**53 + number,  # past a double's integers
                    reserved_credits_micro=number,
                    web_search_calls=3,
                    updated_at=BASE,
                )
            )
    prepared = quota_ledger._usage_statement(2, for_update)
    assert prepared.json_rows is not None
    values = {"tenant_id": tenant, "user_id": user}
    values.update(type_0="daily", start_0=day, type_1="monthly", start_1=month)
    caplog.set_level(logging.DEBUG, logger="minichat_host.db.engine")
    read = await prepared.fetch_values(database, **values)
    expected = await _plain(prepared).fetch_values(database, **values)
    assert len(read) == 4 and sorted(_typed(read)) == sorted(_typed(expected))
    assert {row[1] for row in read} == {day} and {row[3] for row in read} == {2**53, 2**53 + 1}
    assert "read by the plain statement" not in caplog.text
    periods = [Period("daily", day), Period("monthly", month)]
    usage = await quota_ledger.load_usage(database, tenant, user, periods, for_update=for_update)
    assert usage[("daily", day, "total")].spent_credits_micro == 2**53


@SQLITE_ONLY
async def test_the_context_history_read_as_json_is_the_records(database: databases.Database) -> None:
    _, _, chat_id = await _populate(database)
    statement = turns_repo._CONTEXT_HISTORY[False, False]
    assert statement.json_rows is not None
    values = {
        "chat_id": chat_id,
        "boundary_at": BASE + dt.timedelta(hours=1),
        "boundary_id": uuid.UUID(int=2**128 - 1),
        "limit": 50,
    }
    read = [turns_repo._history_row(row) for row in await statement.fetch_values(database, **values)]
    records = await _plain(statement).fetch_all(database, **values)
    expected = [turns_repo.MessageRow.from_record(record) for record in records]
    assert len(read) == 6 and read == expected
    for row, reference in zip(read, expected, strict=True):
        for name in turns_repo.MessageRow.__slots__:
            assert type(getattr(row, name)) is type(getattr(reference, name)), name
    assert {row.content for row in read} == {title or "" for title in TITLES[:6]}


@SQLITE_ONLY
async def test_a_sends_first_look_read_as_json_is_the_plain_statements(database: databases.Database) -> None:
    tenant, user, chat_id = await _populate(database)
    statement = turns_repo._FIRST_LOOK
    assert statement.json_rows is not None
    empty_chat = await database.fetch_val(
        sa.select(chats.c.id).where(chats.c.tenant_id == tenant, chats.c.id != chat_id).limit(1)
    )

    async def both(chat: uuid.UUID) -> tuple[list[Any], list[Any]]:
        values = {"chat_id": chat, "tenant_id": tenant, "user_id": user, "request_id": uuid.uuid4()}
        read = await statement.fetch_values(database, **values)
        expected = await _plain(statement).fetch_values(database, **values)
        return _typed(read), _typed(expected)

    for chat in (chat_id, empty_chat):
        read, expected = await both(chat)
        assert len(read) == 1 and read == expected
    await database.execute(
        thread_summaries.insert().values(
            id=uuid.uuid4(),
            tenant_id=tenant,
            chat_id=chat_id,
            summary_text='so far: 🎉 "quoted"',
            summarized_up_to_message_id=uuid.uuid4(),
            summarized_up_to_created_at=BASE + dt.timedelta(microseconds=3),
            token_estimate=42,
            created_at=BASE,
            updated_at=BASE,
        )
    )
    read, expected = await both(chat_id)
    assert read == expected
    look = await turns_repo.first_look(database, tenant, user, chat_id, uuid.uuid4())
    assert look is not None and look.summary is not None and look.summary.token_estimate == 42
    assert look.summary.frontier.created_at == BASE + dt.timedelta(microseconds=3)
    assert look.boundary is not None and look.boundary.created_at == BASE + dt.timedelta(microseconds=5)
    assert await turns_repo.first_look(database, tenant, uuid.uuid4(), chat_id, uuid.uuid4()) is None
