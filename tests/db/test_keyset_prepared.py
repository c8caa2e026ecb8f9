"""The prepared keyset listings (db/repos/pagination.py) on both engines: every shape - first page, `next`
and `prev`, inclusive or not, each order - against the order computed in Python, ties on the timestamp
included; and the SQLite timestamp reader of db/repos/reads.py against the column type's own."""

from __future__ import annotations

import datetime as dt
import uuid

import databases
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from minichat_host.db.prepared import Prepared
from minichat_host.db.repos import chats as chats_repo
from minichat_host.db.repos import messages as messages_repo
from minichat_host.db.repos.common import in_values
from minichat_host.db.repos.pagination import (
    KeysetListing,
    KeysetOrder,
    PageCursor,
    Position,
    _position_indexes,
)
from minichat_host.db.repos.reads import _sqlite_utc, _sqlite_uuid, fast_utc, fast_uuid
from minichat_host.db.tables import UtcDateTime, chats, messages

BASE = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)


async def _insert_chats(database: databases.Database, tenant: uuid.UUID, user: uuid.UUID) -> None:
    # 9 chats over 4 timestamps (ties broken by id), one deleted, one of another user.
    for number in range(9):
        at = BASE + dt.timedelta(minutes=number // 3, microseconds=0 if number % 2 else 250)
        await database.execute(
            chats.insert().values(
                id=uuid.uuid4(),
                tenant_id=tenant,
                user_id=user,
                model="m",
                title=f"chat {number}",
                is_temporary=False,
                created_at=at,
                updated_at=at,
                deleted_at=BASE if number == 4 else None,
            )
        )
    await database.execute(
        chats.insert().values(
            id=uuid.uuid4(),
            tenant_id=tenant,
            user_id=uuid.uuid4(),
            model="m",
            title="someone else's",
            is_temporary=False,
            created_at=BASE,
            updated_at=BASE,
        )
    )


async def _expected(
    database: databases.Database, tenant: uuid.UUID, user: uuid.UUID, order: KeysetOrder
) -> list[tuple[dt.datetime, uuid.UUID]]:
    rows = await database.fetch_all(
        sa.select(chats.c.updated_at, chats.c.id).where(
            chats.c.tenant_id == tenant, chats.c.user_id == user, chats.c.deleted_at.is_(None)
        )
    )
    keys = [(fast_utc(row["updated_at"]), fast_uuid(row["id"])) for row in rows]
    return sorted(keys, reverse=order.descending)


@pytest.mark.parametrize("order", [chats_repo.ORDER_UPDATED_DESC, chats_repo.ORDER_UPDATED_ASC])
async def test_every_page_shape_of_the_chat_listing(database: databases.Database, order: KeysetOrder) -> None:
    tenant, user = uuid.uuid4(), uuid.uuid4()
    await _insert_chats(database, tenant, user)
    expected = await _expected(database, tenant, user, order)
    assert len(expected) == 8

    records = chats_repo.counted_chats(tenant, user)

    def keys(page: chats_repo.ChatPage[chats_repo.CountedChat]) -> list[tuple[dt.datetime, uuid.UUID]]:
        return [(item.chat.updated_at, item.chat.id) for item in page.items]

    async def page(cursor: PageCursor | None, limit: int = 3) -> chats_repo.ChatPage[chats_repo.CountedChat]:
        return await chats_repo.list_page(
            database, tenant, user, order=order, limit=limit, cursor=cursor, build=records
        )

    # Forward from the first page to the end, then back again from there.
    first = await page(None)
    assert keys(first) == expected[:3] and first.prev_cursor is None
    pages = [first]
    while pages[-1].next_cursor is not None:
        pages.append(await page(pages[-1].next_cursor))
    assert [key for p in pages for key in keys(p)] == expected
    assert [len(p.items) for p in pages] == [3, 3, 2]
    assert pages[1].prev_cursor is not None
    back = await page(pages[-1].prev_cursor)
    assert keys(back) == expected[3:6]
    assert back.next_cursor is not None and back.prev_cursor is not None
    assert keys(await page(back.prev_cursor)) == expected[:3]

    # A position on each row, in each direction, exclusive and inclusive.
    for index, (primary, tiebreak) in enumerate(expected):
        position = Position(primary, tiebreak)
        after = await page(PageCursor("next", position), limit=2)
        assert keys(after) == expected[index + 1 : index + 3]
        assert after.prev_cursor is not None  # the row at the position lies behind
        at_or_after = await page(PageCursor("next", position, inclusive=True), limit=2)
        assert keys(at_or_after) == expected[index : index + 2]
        before = await page(PageCursor("prev", position), limit=2)
        assert keys(before) == expected[max(0, index - 2) : index]
        at_or_before = await page(PageCursor("prev", position, inclusive=True), limit=2)
        assert keys(at_or_before) == expected[max(0, index - 1) : index + 1]

    # Past the end: an empty page whose way back includes the position's row.
    last = Position(*expected[-1])
    empty = await page(PageCursor("next", last))
    assert empty.items == [] and empty.next_cursor is None
    assert empty.prev_cursor == PageCursor("prev", last, inclusive=True)
    assert keys(await page(empty.prev_cursor)) == expected[-3:]


async def test_message_listing_and_lookup(database: databases.Database) -> None:
    tenant, user, chat_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await database.execute(
        chats.insert().values(
            id=chat_id,
            tenant_id=tenant,
            user_id=user,
            model="m",
            title=None,
            is_temporary=False,
            created_at=BASE,
            updated_at=BASE,
        )
    )
    ids: list[uuid.UUID] = []
    for number in range(5):
        message_id = uuid.uuid4()
        ids.append(message_id)
        await database.execute(
            messages.insert().values(
                id=message_id,
                tenant_id=tenant,
                chat_id=chat_id,
                request_id=None if number == 2 else uuid.uuid4(),  # hidden: never listed
                role="user" if number % 2 == 0 else "assistant",
                content=f"message {number}",
                created_at=BASE + dt.timedelta(seconds=number // 2),
            )
        )
    visible = [ids[0], ids[1], ids[3], ids[4]]
    records = messages_repo.message_records(chat_id)
    for order in (messages_repo.ORDER_CREATED_ASC, messages_repo.ORDER_CREATED_DESC):
        rows = await database.fetch_all(
            sa.select(messages.c.created_at, messages.c.id).where(in_values(messages.c.id, visible))
        )
        expected = [
            key[1]
            for key in sorted(
                ((fast_utc(r["created_at"]), fast_uuid(r["id"])) for r in rows), reverse=order.descending
            )
        ]
        first = await messages_repo.list_visible_page(
            database, tenant, chat_id, order=order, limit=3, cursor=None, build=records
        )
        assert [m.id for m in first.items] == expected[:3]
        assert all(m.chat_id == chat_id and m.created_at.tzinfo is dt.UTC for m in first.items)
        assert first.next_cursor is not None
        rest = await messages_repo.list_visible_page(
            database, tenant, chat_id, order=order, limit=3, cursor=first.next_cursor, build=records
        )
        assert [m.id for m in rest.items] == expected[3:] and rest.next_cursor is None
        assert rest.prev_cursor is not None
        again = await messages_repo.list_visible_page(
            database, tenant, chat_id, order=order, limit=3, cursor=rest.prev_cursor, build=records
        )
        assert [m.id for m in again.items] == expected[:3]
    found = await messages_repo.get_visible(database, tenant, chat_id, ids[1])
    assert found is not None and found.content == "message 1" and found.role == "assistant"
    assert found.created_at == BASE and found.created_at.tzinfo is dt.UTC
    assert await messages_repo.get_visible(database, tenant, chat_id, ids[2]) is None  # hidden
    assert await messages_repo.get_visible(database, uuid.uuid4(), chat_id, ids[1]) is None  # other tenant


async def test_page_records_are_the_single_reads_records(database: databases.Database) -> None:
    """The pages are built by position from `fetch_values`; the single reads from records by name. Both
    must give the same records, with the same value types (plain or asyncpg UUIDs, aware UTC, bool)."""
    tenant, user = uuid.uuid4(), uuid.uuid4()
    await _insert_chats(database, tenant, user)
    await database.execute(  # each timestamp its own value: a swapped pair of columns shows
        chats.update().where(chats.c.tenant_id == tenant).values(updated_at=BASE + dt.timedelta(hours=1))
    )
    page = await chats_repo.list_page(
        database,
        tenant,
        user,
        order=chats_repo.ORDER_UPDATED_DESC,
        limit=20,
        cursor=None,
        build=chats_repo.counted_chats(tenant, user),
    )
    assert len(page.items) == 8
    chat_id = page.items[0].chat.id
    for item in page.items:
        single = await chats_repo.get_live_counted(database, tenant, user, item.chat.id)
        assert item == single
        chat = item.chat
        assert (chat.tenant_id, chat.user_id) == (tenant, user)
        assert isinstance(chat.id, uuid.UUID) and type(chat.is_temporary) is bool
        assert chat.created_at.tzinfo is dt.UTC and chat.updated_at.tzinfo is dt.UTC
    for number in range(3):
        await database.execute(
            messages.insert().values(
                id=uuid.uuid4(),
                tenant_id=tenant,
                chat_id=chat_id,
                request_id=uuid.uuid4(),
                role="assistant",
                content="" if number == 0 else f"message {number}",
                model="m" if number else None,
                input_tokens=0 if number == 0 else 7,
                output_tokens=11,
                created_at=BASE + dt.timedelta(microseconds=number),
            )
        )
    for owner in (None, user):
        listed = await messages_repo.list_visible_page(
            database,
            tenant,
            chat_id,
            order=messages_repo.ORDER_CREATED_ASC,
            limit=20,
            cursor=None,
            owner=owner,
            build=messages_repo.message_records(chat_id),
        )
        assert len(listed.items) == 3 and listed.items[0].content == "" and listed.items[0].input_tokens == 0
        for message in listed.items:
            assert message == await messages_repo.get_visible(database, tenant, chat_id, message.id)
            assert isinstance(message.request_id, uuid.UUID) and message.created_at.tzinfo is dt.UTC


async def test_fetch_values_are_a_records_values(database: databases.Database) -> None:
    tenant, user = uuid.uuid4(), uuid.uuid4()
    await _insert_chats(database, tenant, user)
    statement = Prepared(
        sa.select(*chats_repo.OWNED_CHAT_COLUMNS, chats.c.message_count)
        .where(chats_repo.OWNED_LIVE)
        .order_by(chats.c.updated_at, chats.c.id),
        "test values",
    )
    scope = {"tenant_id": tenant, "user_id": user}
    values = await statement.fetch_values(database, **scope)
    records = await statement.fetch_all(database, **scope)
    assert len(values) == 8 and values == [record.values() for record in records]
    assert await statement.fetch_values(database, tenant_id=uuid.uuid4(), user_id=user) == []


def test_a_listing_must_select_its_orders_columns() -> None:
    listing = KeysetListing("titles only", columns=(chats.c.title,), table=chats, scope=chats_repo.OWNED_LIVE)
    with pytest.raises(ValueError, match="does not select the columns of 'updated_at desc'"):
        _position_indexes(listing, chats_repo.ORDER_UPDATED_DESC)


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "stored",
    ["2026-03-01 09:00:00.000250", "2026-03-01 09:00:00", "2026-03-01T09:00:00.5"],
)
def test_sqlite_timestamp_reader_matches_the_column_type(engine_name: str, stored: str) -> None:
    processor = UtcDateTime().result_processor(sqlite.dialect(), None)
    assert processor is not None
    try:
        reference = processor(stored)
    except ValueError:
        reference = fast_utc(stored)  # SQLAlchemy's parser only takes the form it writes
    read = _sqlite_utc(stored)
    assert read == reference and read.tzinfo is dt.UTC
    assert _sqlite_utc(None) is None


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_sqlite_uuid_reader_matches_the_column_type(engine_name: str) -> None:
    processor = sa.Uuid().result_processor(sqlite.dialect(), None)
    assert processor is not None
    for value in [uuid.uuid4(), uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), uuid.uuid1()]:
        read = _sqlite_uuid(value.hex)
        reference = processor(value.hex)
        assert type(read) is uuid.UUID and read == reference and hash(read) == hash(reference)
        assert str(read) == str(value) and read.version == value.version and read.is_safe == reference.is_safe
    assert _sqlite_uuid(str(uuid.UUID(int=7))) == uuid.UUID(int=7)  # the dashed form goes the slow way
    assert _sqlite_uuid(None) is None
    for odd in ["+" + "0" * 31, "1_2" + "0" * 29]:  # what int() accepts beyond hex: the same as UUID()
        assert _sqlite_uuid(odd) == uuid.UUID(odd)
    for garbage in ["z" * 32, "0" * 31, ""]:
        with pytest.raises(ValueError):
            _sqlite_uuid(garbage)


@pytest.mark.parametrize("engine_name", ["sqlite"], indirect=True)
def test_sqlite_timestamp_writer_matches_sqlalchemys_chain(engine_name: str) -> None:
    # UtcDateTime's own SQLite bind processor against the chain it replaces: process_bind_param, then
    # SQLAlchemy's DATETIME formatting of the naive UTC value.
    dialect = sqlite.dialect()
    column_type = UtcDateTime()
    fast = column_type.dialect_impl(dialect).bind_processor(dialect)
    reference = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert fast is not None and reference is not None
    plus_two = dt.timezone(dt.timedelta(hours=2))
    values = [
        dt.datetime(2026, 3, 1, 9, 0, 0, 250, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 9, 0, 0, tzinfo=dt.UTC),  # no microseconds: still six digits
        dt.datetime(2026, 3, 1, 1, 30, 0, 999999, tzinfo=plus_two),  # converted, across midnight
        dt.datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 9, 0, 0, 500000, tzinfo=dt.UTC),  # trailing zeros kept
        dt.datetime(2026, 3, 1, 9, 0, 0, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 9, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(0))),  # UTC, not dt.UTC itself
        dt.datetime.now(dt.UTC),
    ]
    values += [dt.datetime.now(dt.UTC) + dt.timedelta(microseconds=n * 7919) for n in range(500)]
    for value in values:
        expected = reference(column_type.process_bind_param(value, dialect))
        assert fast(value) == expected
    assert fast(None) is None
    with pytest.raises(ValueError, match="naive"):
        fast(dt.datetime(2026, 3, 1))
