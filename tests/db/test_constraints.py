"""The schema's guarantees, enforced by the database itself on SQLite and PostgreSQL alike."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import databases
import pytest
import sqlalchemy as sa

from minichat_host.db.engine import INTEGRITY_ERRORS, is_foreign_key_violation, is_unique_violation
from minichat_host.db.tables import chat_turns, chats, messages

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


async def _chat(database: databases.Database) -> uuid.UUID:
    chat_id = uuid.uuid4()
    await database.execute(
        chats.insert().values(
            id=chat_id,
            tenant_id=uuid.uuid4(),
            user_id=uuid.uuid4(),
            model="m",
            created_at=NOW,
            updated_at=NOW,
        )
    )
    return chat_id


async def _turn(
    database: databases.Database, chat_id: uuid.UUID, state: str = "running", **extra: Any
) -> uuid.UUID:
    turn_id = uuid.uuid4()
    await database.execute(
        chat_turns.insert().values(
            id=turn_id,
            tenant_id=uuid.uuid4(),
            chat_id=chat_id,
            request_id=uuid.uuid4(),
            state=state,
            started_at=NOW,
            updated_at=NOW,
            **extra,
        )
    )
    return turn_id


async def _message(
    database: databases.Database,
    chat_id: uuid.UUID,
    request_id: uuid.UUID | None,
    role: str = "user",
    **extra: Any,
) -> uuid.UUID:
    message_id = uuid.uuid4()
    await database.execute(
        messages.insert().values(
            id=message_id,
            tenant_id=uuid.uuid4(),
            chat_id=chat_id,
            request_id=request_id,
            role=role,
            content="hi",
            created_at=NOW,
            **extra,
        )
    )
    return message_id


async def test_a_second_running_turn_in_a_chat_is_refused(database: databases.Database) -> None:
    chat_id = await _chat(database)
    await _turn(database, chat_id)
    with pytest.raises(INTEGRITY_ERRORS) as caught:
        await _turn(database, chat_id)
    assert is_unique_violation(caught.value)
    assert not is_foreign_key_violation(caught.value)


async def test_running_turns_in_different_chats_are_fine(database: databases.Database) -> None:
    await _turn(database, await _chat(database))
    await _turn(database, await _chat(database))


async def test_a_new_running_turn_after_the_first_finished_is_fine(database: databases.Database) -> None:
    chat_id = await _chat(database)
    first = await _turn(database, chat_id)
    await database.execute(chat_turns.update().where(chat_turns.c.id == first).values(state="completed"))
    await _turn(database, chat_id)
    # A soft-deleted running turn does not count either.
    await database.execute(chat_turns.update().where(chat_turns.c.state == "running").values(deleted_at=NOW))
    await _turn(database, chat_id)
    running = sa.select(sa.func.count()).where(
        chat_turns.c.chat_id == chat_id, chat_turns.c.state == "running"
    )
    assert await database.fetch_val(running) == 2


async def test_request_ids_are_never_reused_in_a_chat(database: databases.Database) -> None:
    chat_id = await _chat(database)
    request_id = uuid.uuid4()
    await database.execute(
        chat_turns.insert().values(
            id=uuid.uuid4(),
            tenant_id=uuid.uuid4(),
            chat_id=chat_id,
            request_id=request_id,
            state="failed",
            started_at=NOW,
            updated_at=NOW,
            deleted_at=NOW,
        )
    )
    with pytest.raises(INTEGRITY_ERRORS) as caught:
        await database.execute(
            chat_turns.insert().values(
                id=uuid.uuid4(),
                tenant_id=uuid.uuid4(),
                chat_id=chat_id,
                request_id=request_id,
                state="completed",
                started_at=NOW,
                updated_at=NOW,
            )
        )
    assert is_unique_violation(caught.value)


async def test_one_live_message_per_role_and_request(database: databases.Database) -> None:
    chat_id = await _chat(database)
    request_id = uuid.uuid4()
    await _message(database, chat_id, request_id, "user")
    await _message(database, chat_id, request_id, "assistant")
    with pytest.raises(INTEGRITY_ERRORS) as caught:
        await _message(database, chat_id, request_id, "user")
    assert is_unique_violation(caught.value)


async def test_a_soft_deleted_message_frees_its_request(database: databases.Database) -> None:
    chat_id = await _chat(database)
    request_id = uuid.uuid4()
    await _message(database, chat_id, request_id, "user", deleted_at=NOW)
    await _message(database, chat_id, request_id, "user")
    # Messages without a request id (e.g. system messages) are not constrained.
    await _message(database, chat_id, None, "system")
    await _message(database, chat_id, None, "system")


async def test_check_constraints_hold(database: databases.Database) -> None:
    chat_id = await _chat(database)
    with pytest.raises(INTEGRITY_ERRORS):
        await _turn(database, chat_id, state="paused")
    with pytest.raises(INTEGRITY_ERRORS):
        await _message(database, chat_id, uuid.uuid4(), role="tool")


async def test_foreign_keys_are_enforced(database: databases.Database) -> None:
    with pytest.raises(INTEGRITY_ERRORS) as caught:
        await _message(database, uuid.uuid4(), uuid.uuid4())
    assert is_foreign_key_violation(caught.value)
    assert not is_unique_violation(caught.value)


async def test_deleting_a_chat_cascades_and_unlinks_the_assistant_message(
    database: databases.Database,
) -> None:
    chat_id = await _chat(database)
    assistant = await _message(database, chat_id, uuid.uuid4(), "assistant")
    turn_id = await _turn(database, chat_id, state="completed", assistant_message_id=assistant)

    await database.execute(messages.delete().where(messages.c.id == assistant))
    unlinked = sa.select(chat_turns.c.assistant_message_id).where(chat_turns.c.id == turn_id)
    assert await database.fetch_val(unlinked) is None

    await _message(database, chat_id, uuid.uuid4())
    await database.execute(chats.delete().where(chats.c.id == chat_id))
    for table in (messages, chat_turns):
        assert await database.fetch_val(sa.select(sa.func.count()).select_from(table)) == 0
