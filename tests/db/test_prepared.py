"""Prepared statements (db/prepared.py) on both engines: values bound through the column types, results
converted like ordinary statements, inside and outside transactions, and what cannot be prepared refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import databases
import pytest
import sqlalchemy as sa

from minichat_host.db.engine import is_unique_violation
from minichat_host.db.prepared import Prepared
from minichat_host.db.repos.common import in_values
from minichat_host.db.tables import chats

pytestmark = pytest.mark.parametrize("engine_name", ["sqlite", "postgresql"], indirect=True)

INSERT_CHAT = Prepared(chats.insert(), "insert chat")
OWNED_LIVE = Prepared(
    sa.select(chats.c.id, chats.c.title, chats.c.is_temporary, chats.c.created_at)
    .where(
        chats.c.tenant_id == sa.bindparam("tenant_id"),
        chats.c.user_id == sa.bindparam("user_id"),
        chats.c.deleted_at.is_(None),
        chats.c.model == "gpt",  # a value written into the statement
    )
    .order_by(chats.c.created_at, chats.c.id),
    "owned live chats",
)
RENAME = Prepared(
    chats.update().where(chats.c.id == sa.bindparam("chat_id")).returning(chats.c.title), "rename"
)
COUNT = Prepared(sa.select(sa.func.count()).select_from(chats), "count")


def _chat(
    tenant: uuid.UUID, user: uuid.UUID, title: str, *, minute: int, model: str = "gpt"
) -> dict[str, object]:
    at = dt.datetime(2026, 1, 1, 12, minute, tzinfo=dt.UTC)
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant,
        "user_id": user,
        "model": model,
        "title": title,
        "is_temporary": False,
        "created_at": at,
        "updated_at": at,
    }


async def test_insert_select_update_round_trip(database: databases.Database) -> None:
    tenant, user = uuid.uuid4(), uuid.uuid4()
    first = _chat(tenant, user, "first", minute=1)
    await INSERT_CHAT.execute(database, **first)
    await INSERT_CHAT.execute(database, **_chat(tenant, user, "second", minute=2))
    await INSERT_CHAT.execute(database, **_chat(tenant, user, "other model", minute=3, model="o"))
    await INSERT_CHAT.execute(database, **_chat(tenant, uuid.uuid4(), "someone else", minute=4))

    rows = await OWNED_LIVE.fetch_all(database, tenant_id=tenant, user_id=user)
    assert [row["title"] for row in rows] == ["first", "second"]
    top = rows[0]
    # Converted like any statement's rows: UUID, bool, aware UTC datetime; by name, position and Column.
    assert (top["id"] == first["id"] and type(top["id"]) is uuid.UUID) or str(top["id"]) == str(first["id"])
    assert top[1] == "first" and top[chats.c.title] == "first" and top.title == "first"
    assert top["is_temporary"] is False
    assert top["created_at"] == first["created_at"] and top["created_at"].tzinfo is not None
    assert await COUNT.fetch_val(database) == 4

    renamed = await RENAME.fetch_one(database, chat_id=first["id"], title="renamed")
    assert renamed is not None and renamed["title"] == "renamed"
    assert await RENAME.fetch_one(database, chat_id=uuid.uuid4(), title="x") is None
    # The same statement with another set of columns is compiled again, not confused with the first.
    await INSERT_CHAT.execute(
        database,
        id=uuid.uuid4(),
        tenant_id=tenant,
        user_id=user,
        model="gpt",
        created_at=first["created_at"],
        updated_at=first["updated_at"],
    )
    titles = [row["title"] for row in await OWNED_LIVE.fetch_all(database, tenant_id=tenant, user_id=user)]
    assert sorted(titles, key=str) == sorted(["renamed", "second", None], key=str)


async def test_runs_inside_the_callers_transaction(database: databases.Database) -> None:
    tenant, user = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with database.transaction():
            await INSERT_CHAT.execute(database, **_chat(tenant, user, "rolled back", minute=1))
            assert len(await OWNED_LIVE.fetch_all(database, tenant_id=tenant, user_id=user)) == 1
            raise RuntimeError("roll back")
    assert await OWNED_LIVE.fetch_all(database, tenant_id=tenant, user_id=user) == []
    async with database.connection() as connection, connection.transaction():
        await INSERT_CHAT.execute(connection, **_chat(tenant, user, "kept", minute=2))
    assert [r["title"] for r in await OWNED_LIVE.fetch_all(database, tenant_id=tenant, user_id=user)] == [
        "kept"
    ]


async def test_missing_values_and_value_dependent_sql_are_refused(database: databases.Database) -> None:
    with pytest.raises(KeyError, match="user_id"):
        await OWNED_LIVE.fetch_all(database, tenant_id=uuid.uuid4())
    expanding = Prepared(sa.select(chats.c.id).where(chats.c.id.in_(sa.bindparam("ids", expanding=True))))
    with pytest.raises(ValueError, match="depends on its values"):
        await expanding.fetch_all(database, ids=[uuid.uuid4()])
    # Typed separate binds (in_values) have a fixed shape: those can be prepared.
    fixed = Prepared(sa.select(chats.c.id).where(in_values(chats.c.id, [uuid.uuid4(), uuid.uuid4()])))
    assert await fixed.fetch_all(database) == []
    with pytest.raises(TypeError, match="cannot run prepared statements"):
        await COUNT.fetch_val(object())


async def test_other_tasks_neither_see_nor_wait_for_an_open_transaction(
    database: databases.Database,
) -> None:
    tenant, user = uuid.uuid4(), uuid.uuid4()
    await INSERT_CHAT.execute(database, **_chat(tenant, user, "committed", minute=1))

    async def outside() -> list[str]:
        rows = await OWNED_LIVE.fetch_all(database, tenant_id=tenant, user_id=user)
        return [row["title"] for row in rows]

    async with database.transaction():
        await INSERT_CHAT.execute(database, **_chat(tenant, user, "pending", minute=2))
        inside = [r["title"] for r in await OWNED_LIVE.fetch_all(database, tenant_id=tenant, user_id=user)]
        assert inside == ["committed", "pending"]
        # Another task runs on a connection of its own: the committed row only, without waiting.
        assert await asyncio.wait_for(asyncio.create_task(outside()), 5) == ["committed"]
    assert await outside() == ["committed", "pending"]


async def test_statements_outside_a_transaction_leave_no_connection_behind(
    database: databases.Database, engine_name: str
) -> None:
    tenant, user = uuid.uuid4(), uuid.uuid4()
    chat = _chat(tenant, user, "once", minute=1)
    await INSERT_CHAT.execute(database, **chat)
    for _ in range(20):
        assert len(await OWNED_LIVE.fetch_all(database, tenant_id=tenant, user_id=user)) == 1
    with pytest.raises(Exception) as failed:
        await INSERT_CHAT.execute(database, **chat)  # the same primary key again
    assert is_unique_violation(failed.value)
    task = asyncio.current_task()
    assert task is not None and database._connection_map.get(task) is None
    if engine_name == "sqlite":
        # One pooled connection served all of them, the failed insert's included, and is idle again.
        pool: Any = database._backend._pool  # type: ignore[attr-defined]
        assert len(pool._idle) == 1 and not pool._idle[0].in_transaction
    else:
        # Every connection is idle, back in asyncpg's pool or parked outside any transaction, and every turn
        # at the pool given back.
        backend: Any = database._backend  # type: ignore[attr-defined]
        assert backend.turns._value == backend._pool.get_max_size()
        assert backend._pool.get_idle_size() + len(backend._parked) == backend._pool.get_size()
        assert not any(proxy._con.is_in_transaction() for proxy in backend._parked)
    # The task's later transaction starts cleanly on a connection of its own.
    async with database.transaction():
        await RENAME.fetch_one(database, chat_id=chat["id"], title="renamed")
    assert [r["title"] for r in await OWNED_LIVE.fetch_all(database, tenant_id=tenant, user_id=user)] == [
        "renamed"
    ]
