"""Turns (`chat_turns`) and the message rows a turn writes: the queries of the send / finalize / mutate /
watchdog paths.

Every function runs on the `databases.Database` handed in; inside `async with db.transaction()` (or the
outbox's transaction) the queries of one task share that transaction. State changes are compare-and-set
UPDATEs with `RETURNING id`, so "rows affected" is exact on both engines (`databases` reports no rowcount).
Unique-index violations surface as `TurnConflict` so callers can answer 409 instead of 500.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import asyncpg
import databases
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from minichat_host.db.prepared import Prepared
from minichat_host.db.repos import chats as chats_repo
from minichat_host.db.repos.common import as_utc, as_uuid, row_record
from minichat_host.db.repos.json_rows import json_rows
from minichat_host.db.repos.reads import fast_read, fast_utc, fast_uuid
from minichat_host.db.tables import (
    UtcDateTime,
    attachments,
    chat_turns,
    chat_vector_stores,
    chats,
    message_attachments,
    messages,
    thread_summaries,
)

TurnState = Literal["running", "completed", "failed", "cancelled"]
TERMINAL_STATES: Final = frozenset({"completed", "failed", "cancelled"})
ToolCounter = Literal["web_search", "code_interpreter", "file_search"]

_TOOL_COLUMNS: Final[dict[str, str]] = {
    "web_search": "web_search_completed_count",
    "code_interpreter": "code_interpreter_completed_count",
    "file_search": "file_search_completed_count",
}


class TurnConflict(Exception):
    """An insert hit a unique index: a running turn exists, or the request_id / message is taken."""


def is_unique_violation(exc: BaseException) -> bool:
    """True for a unique / primary-key violation on either engine (wrapped by SQLAlchemy or raw)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, asyncpg.UniqueViolationError):
            return True
        if isinstance(current, sqlite3.IntegrityError) and "UNIQUE constraint failed" in str(current):
            return True
        if isinstance(current, IntegrityError) and current.orig is not None:
            current = current.orig
            continue
        current = current.__cause__ or current.__context__
    return False


def _plain(record: Any, names: Iterable[str]) -> dict[str, Any]:
    """Column values with driver types normalized (asyncpg's UUID class, naive SQLite datetimes)."""
    values: dict[str, Any] = {}
    for name in names:
        value = record[name]
        if isinstance(value, uuid.UUID):
            value = as_uuid(value)
        elif isinstance(value, dt.datetime):
            value = as_utc(value)
        values[name] = value
    return values


def is_lock_conflict(exc: BaseException) -> bool:
    """True for a PostgreSQL deadlock or serialization failure: the transaction may simply be run again."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, asyncpg.DeadlockDetectedError | asyncpg.SerializationError):
            return True
        current = current.__cause__ or current.__context__
    return False


# --- turn rows ------------------------------------------------------------------------------------
@row_record
class TurnRow:
    id: uuid.UUID
    tenant_id: uuid.UUID
    chat_id: uuid.UUID
    request_id: uuid.UUID
    requester_type: str
    requester_user_id: uuid.UUID | None
    state: TurnState
    provider_name: str | None
    provider_response_id: str | None
    assistant_message_id: uuid.UUID | None
    error_code: str | None
    error_detail: str | None
    reserve_tokens: int | None
    max_output_tokens_applied: int | None
    reserved_credits_micro: int | None
    policy_version_applied: int | None
    effective_model: str | None
    minimal_generation_floor_applied: int | None
    quota_decision: str | None
    downgrade_from: str | None
    downgrade_reason: str | None
    web_search_enabled: bool
    web_search_completed_count: int
    code_interpreter_completed_count: int
    file_search_completed_count: int
    deleted_at: dt.datetime | None
    replaced_by_request_id: uuid.UUID | None
    started_at: dt.datetime
    last_progress_at: dt.datetime | None
    completed_at: dt.datetime | None
    updated_at: dt.datetime

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_record(cls, record: Any) -> TurnRow:
        return cls(**_plain(record, cls.__slots__))  # type: ignore[attr-defined]


# Ids and timestamps read through the fast SQLite readers (a turn row has eight UUIDs and four timestamps).
_TURN_COLUMNS = [fast_read(chat_turns.c[name]) for name in TurnRow.__slots__]  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Preflight:
    """The preflight columns of a turn (NULL on a retry/edit turn until its back-fill)."""

    reserve_tokens: int
    max_output_tokens_applied: int
    reserved_credits_micro: int
    policy_version_applied: int
    effective_model: str
    minimal_generation_floor_applied: int
    quota_decision: str
    downgrade_from: str | None
    downgrade_reason: str | None
    provider_name: str | None

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


async def insert_turn(
    db: databases.Database,
    *,
    turn_id: uuid.UUID,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    request_id: uuid.UUID,
    requester_user_id: uuid.UUID,
    web_search_enabled: bool,
    now: dt.datetime,
    preflight: Preflight | None,
) -> None:
    """Insert a `running` turn (started_at = last_progress_at = now). `TurnConflict` on a unique index."""
    values: dict[str, Any] = {
        "id": turn_id,
        "tenant_id": tenant_id,
        "chat_id": chat_id,
        "request_id": request_id,
        "requester_type": "user",
        "requester_user_id": requester_user_id,
        "state": "running",
        "web_search_enabled": web_search_enabled,
        "started_at": now,
        "last_progress_at": now,
        "updated_at": now,
    }
    if preflight is not None:
        values.update(preflight.values())
    await _insert_or_conflict(_INSERT_TURN.execute(db, **values))


# The columns a turn start sets besides its preflight's (the SQLite insert's, and the PostgreSQL CTE's).
_TURN_START_COLUMNS: Final = (
    "id",
    "tenant_id",
    "chat_id",
    "request_id",
    "requester_type",
    "requester_user_id",
    "state",
    "web_search_enabled",
    "started_at",
    "last_progress_at",
    "updated_at",
)
_INSERT_TURN = Prepared(
    chat_turns.insert(), "insert turn", warm_columns=[(*_TURN_START_COLUMNS, *Preflight.__slots__)]
)


async def _insert_or_conflict(insert: Awaitable[None]) -> None:
    try:
        await insert
    except Exception as exc:
        if is_unique_violation(exc):
            raise TurnConflict(str(exc)) from exc
        raise


async def backfill_preflight(
    db: databases.Database, turn_id: uuid.UUID, preflight: Preflight, now: dt.datetime
) -> bool:
    """Set the preflight columns of a still-running retry/edit turn; False when it is no longer running."""
    row = await db.fetch_one(
        chat_turns.update()
        .where(chat_turns.c.id == turn_id, chat_turns.c.state == "running")
        .values(**preflight.values(), updated_at=now)
        .returning(chat_turns.c.id)
    )
    return row is not None


_GET_TURN = Prepared(sa.select(*_TURN_COLUMNS).where(chat_turns.c.id == sa.bindparam("turn_id")), "get turn")
_TURN_BY_REQUEST = Prepared(
    sa.select(*_TURN_COLUMNS).where(
        chat_turns.c.chat_id == sa.bindparam("chat_id"), chat_turns.c.request_id == sa.bindparam("request_id")
    ),
    "turn by request",
)
# `state = 'running'` written into the SQL, not bound: SQLite uses a partial index (uq_chat_turns_one_running,
# ix_chat_turns_running_progress) only when the query's WHERE implies the index's, which a parameter never
# does (find_running: 91 µs → 9 µs; the watchdog's scan: a full table scan → an index range).
_IS_RUNNING: Final = chat_turns.c.state == sa.literal_column("'running'")

_RUNNING_TURN = Prepared(
    sa.select(*_TURN_COLUMNS).where(
        chat_turns.c.chat_id == sa.bindparam("chat_id"),
        _IS_RUNNING,
        chat_turns.c.deleted_at.is_(None),
    ),
    "running turn",
)
_LATEST_LIVE_TURN = (
    sa.select(*_TURN_COLUMNS)
    .where(chat_turns.c.chat_id == sa.bindparam("chat_id"), chat_turns.c.deleted_at.is_(None))
    .order_by(chat_turns.c.started_at.desc(), chat_turns.c.id.desc())
    .limit(1)
)
_LATEST_LIVE = {
    False: Prepared(_LATEST_LIVE_TURN, "latest live turn"),
    True: Prepared(_LATEST_LIVE_TURN.with_for_update(), "latest live turn for update"),
}


async def get_turn(db: databases.Database, turn_id: uuid.UUID) -> TurnRow | None:
    record = await _GET_TURN.fetch_one(db, turn_id=turn_id)
    return TurnRow.from_record(record) if record is not None else None


async def find_by_request(
    db: databases.Database, chat_id: uuid.UUID, request_id: uuid.UUID
) -> TurnRow | None:
    """The turn of (chat_id, request_id), soft-deleted ones included (a request_id is never reused)."""
    record = await _TURN_BY_REQUEST.fetch_one(db, chat_id=chat_id, request_id=request_id)
    return TurnRow.from_record(record) if record is not None else None


@row_record
class OwnedTurnStatus:
    """What `GET …/turns/{request_id}` answers with, read together with the owner check."""

    requester_user_id: uuid.UUID | None
    state: TurnState
    error_code: str | None
    assistant_message_id: uuid.UUID | None
    updated_at: dt.datetime


_OWNED_TURN_STATUS_QUERY: Final = sa.select(
    fast_read(chat_turns.c.requester_user_id),
    chat_turns.c.state,
    chat_turns.c.error_code,
    fast_read(chat_turns.c.assistant_message_id),
    fast_read(chat_turns.c.updated_at),
).where(
    chat_turns.c.chat_id == sa.bindparam("chat_id"),
    chat_turns.c.request_id == sa.bindparam("request_id"),
    # Uncorrelated: evaluated once, on the chats primary key.
    sa.exists().where(chats.c.id == sa.bindparam("chat_id"), chats_repo.OWNED_LIVE),
)
_OWNED_TURN_STATUS: Final = Prepared(_OWNED_TURN_STATUS_QUERY, "owned turn status")
_OWNED_TURN_STATUS.json_rows = json_rows(_OWNED_TURN_STATUS_QUERY, "owned turn status")  # get turn's read


async def owned_turn_status(
    db: databases.Database,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    chat_id: uuid.UUID,
    request_id: uuid.UUID,
) -> OwnedTurnStatus | None:
    """The status columns of (chat_id, request_id), soft-deleted turns included, when the chat is the
    owner's live chat; None otherwise (the caller tells a missing chat from a missing turn). One statement
    instead of the chat read and the 31-column turn read."""
    rows = await _OWNED_TURN_STATUS.fetch_values(
        db, chat_id=chat_id, request_id=request_id, tenant_id=tenant_id, user_id=user_id
    )
    if not rows:
        return None
    requester, state, error_code, assistant_message_id, updated_at = rows[0]
    return OwnedTurnStatus(
        requester_user_id=None if requester is None else fast_uuid(requester),
        state=state,
        error_code=error_code,
        assistant_message_id=None if assistant_message_id is None else fast_uuid(assistant_message_id),
        updated_at=fast_utc(updated_at),
    )


async def find_running(db: databases.Database, chat_id: uuid.UUID) -> TurnRow | None:
    """The chat's live running turn, if any (at most one: a partial unique index)."""
    record = await _RUNNING_TURN.fetch_one(db, chat_id=chat_id)
    return TurnRow.from_record(record) if record is not None else None


async def latest_live_turn(
    db: databases.Database, chat_id: uuid.UUID, *, for_update: bool = False
) -> TurnRow | None:
    """The chat's newest live turn by (started_at, id), locked on PostgreSQL when `for_update`."""
    record = await _LATEST_LIVE[for_update].fetch_one(db, chat_id=chat_id)
    return TurnRow.from_record(record) if record is not None else None


async def cas_finish(
    db: databases.Database,
    turn_id: uuid.UUID,
    *,
    state: TurnState,
    error_code: str | None,
    error_detail: str | None,
    provider_response_id: str | None,
    now: dt.datetime,
) -> bool:
    """`running → state` compare-and-set; True only for the one caller that made the change."""
    values: dict[str, Any] = {
        "state": state,
        "error_code": error_code,
        "error_detail": error_detail,
        "completed_at": now,
        "updated_at": now,
    }
    if provider_response_id is not None:
        values["provider_response_id"] = provider_response_id
    row = await _UPDATE_RUNNING_TURN.fetch_one(db, b_turn_id=turn_id, **values)
    return row is not None


_FINISH_COLUMNS: Final = ("b_turn_id", "state", "error_code", "error_detail", "completed_at", "updated_at")
# Columns set are those given (b_turn_id names the turn); the RETURNING row says the turn was running.
_UPDATE_RUNNING_TURN = Prepared(
    chat_turns.update()
    .where(chat_turns.c.id == sa.bindparam("b_turn_id"), chat_turns.c.state == "running")
    .returning(chat_turns.c.id),
    "update running turn",
    # A finalization's sets: with the provider's response id (a run that reached the provider), without;
    # and a long run's progress touch (every 30 s), which would otherwise compile amid the relaying.
    warm_columns=[
        (*_FINISH_COLUMNS, "provider_response_id"),
        _FINISH_COLUMNS,
        ("b_turn_id", "last_progress_at"),
    ],
)


async def cas_orphan(
    db: databases.Database, turn_id: uuid.UUID, *, stale_before: dt.datetime, now: dt.datetime
) -> bool:
    """The watchdog's re-checked CAS: still running, live and without progress since `stale_before`."""
    row = await db.fetch_one(
        chat_turns.update()
        .where(
            chat_turns.c.id == turn_id,
            chat_turns.c.state == "running",
            chat_turns.c.deleted_at.is_(None),
            chat_turns.c.last_progress_at <= stale_before,
        )
        .values(state="failed", error_code="orphan_timeout", completed_at=now, updated_at=now)
        .returning(chat_turns.c.id)
    )
    return row is not None


async def find_stale_running(
    db: databases.Database, *, stale_before: dt.datetime, limit: int = 100
) -> list[TurnRow]:
    """Up to `limit` live running turns without progress since `stale_before`, oldest progress first."""
    records = await _STALE_RUNNING.fetch_all(db, stale_before=stale_before, limit=limit)
    return [TurnRow.from_record(r) for r in records]


_STALE_RUNNING = Prepared(
    sa.select(*_TURN_COLUMNS)
    .where(
        _IS_RUNNING,
        chat_turns.c.deleted_at.is_(None),
        chat_turns.c.last_progress_at <= sa.bindparam("stale_before"),
    )
    .order_by(chat_turns.c.last_progress_at, chat_turns.c.id)
    .limit(sa.bindparam("limit")),
    "stale running turns",
)


_SET_ASSISTANT_MESSAGE = Prepared(
    chat_turns.update()
    .where(chat_turns.c.id == sa.bindparam("b_turn_id"))
    .values(assistant_message_id=sa.bindparam("message_id")),
    "set assistant message",
)


async def touch_progress(db: databases.Database, turn_id: uuid.UUID, now: dt.datetime) -> bool:
    """Record progress of a running turn (the watchdog's staleness clock); False when it is not running."""
    row = await _UPDATE_RUNNING_TURN.fetch_one(db, b_turn_id=turn_id, last_progress_at=now)
    return row is not None


async def increment_tool_count(
    db: databases.Database, turn_id: uuid.UUID, tool: ToolCounter, now: dt.datetime
) -> None:
    """Count one finished tool call on a running turn; the call is progress too."""
    column = chat_turns.c[_TOOL_COLUMNS[tool]]
    await db.execute(
        chat_turns.update()
        .where(chat_turns.c.id == turn_id, chat_turns.c.state == "running")
        .values({column: column + 1, chat_turns.c.last_progress_at: now})
    )


async def soft_delete_turn(
    db: databases.Database, turn: TurnRow, *, now: dt.datetime, replaced_by: uuid.UUID | None = None
) -> None:
    """Soft-delete a turn and its live messages (`replaced_by_request_id` set by retry/edit)."""
    await db.execute(
        chat_turns.update()
        .where(chat_turns.c.id == turn.id)
        .values(deleted_at=now, updated_at=now, replaced_by_request_id=replaced_by)
    )
    await db.execute(
        messages.update()
        .where(
            messages.c.chat_id == turn.chat_id,
            messages.c.request_id == turn.request_id,
            messages.c.deleted_at.is_(None),
        )
        .values(deleted_at=now)
    )


async def chat_owner(db: databases.Database, chat_id: uuid.UUID) -> uuid.UUID | None:
    """The user who owns a chat (deleted chats included)."""
    value = await db.fetch_val(sa.select(chats.c.user_id).where(chats.c.id == chat_id))
    return as_uuid(value) if value is not None else None


# --- messages of a turn ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MessageRow:
    id: uuid.UUID
    chat_id: uuid.UUID
    request_id: uuid.UUID | None
    role: str
    content: str
    model: str | None
    input_tokens: int
    output_tokens: int
    created_at: dt.datetime
    deleted_at: dt.datetime | None

    @classmethod
    def from_record(cls, record: Any) -> MessageRow:
        return cls(**_plain(record, cls.__slots__))  # type: ignore[attr-defined]


_MESSAGE_COLUMNS = [messages.c[name] for name in MessageRow.__slots__]  # type: ignore[attr-defined]


async def insert_user_message(
    db: databases.Database,
    *,
    message_id: uuid.UUID,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    request_id: uuid.UUID,
    content: str,
    token_estimate: int,
    now: dt.datetime,
) -> None:
    """Insert the user message of a turn; `TurnConflict` when the request already has a live one."""
    await _insert_or_conflict(
        _INSERT_MESSAGE.execute(
            db,
            id=message_id,
            tenant_id=tenant_id,
            chat_id=chat_id,
            request_id=request_id,
            role="user",
            content=content,
            token_estimate=token_estimate,
            created_at=now,
        )
    )


_USER_MESSAGE_COLUMNS: Final = (
    "id",
    "tenant_id",
    "chat_id",
    "request_id",
    "role",
    "content",
    "token_estimate",
    "created_at",
)
_ASSISTANT_MESSAGE_COLUMNS: Final = (
    *_USER_MESSAGE_COLUMNS,
    "provider_response_id",
    "features_used",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "reasoning_tokens",
    "model",
)
_INSERT_MESSAGE = Prepared(
    messages.insert(), "insert message", warm_columns=[_USER_MESSAGE_COLUMNS, _ASSISTANT_MESSAGE_COLUMNS]
)


async def insert_user_message_and_turn(
    db: databases.Database,
    *,
    message_id: uuid.UUID,
    turn_id: uuid.UUID,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    request_id: uuid.UUID,
    requester_user_id: uuid.UUID,
    content: str,
    token_estimate: int,
    web_search_enabled: bool,
    now: dt.datetime,
    preflight: Preflight,
) -> None:
    """A send's user message and its `running` turn; `TurnConflict` on a unique index.

    On PostgreSQL one statement (the message insert as a data-modifying CTE): a round trip less on the path
    to the first token. SQLite, whose statements run in process, runs the two inserts.
    """
    if db.url.dialect != "postgresql":
        await insert_user_message(
            db,
            message_id=message_id,
            tenant_id=tenant_id,
            chat_id=chat_id,
            request_id=request_id,
            content=content,
            token_estimate=token_estimate,
            now=now,
        )
        await insert_turn(
            db,
            turn_id=turn_id,
            tenant_id=tenant_id,
            chat_id=chat_id,
            request_id=request_id,
            requester_user_id=requester_user_id,
            web_search_enabled=web_search_enabled,
            now=now,
            preflight=preflight,
        )
        return
    values: dict[str, Any] = {
        "m_id": message_id,
        "m_tenant_id": tenant_id,
        "m_chat_id": chat_id,
        "m_request_id": request_id,
        "m_role": "user",
        "m_content": content,
        "m_token_estimate": token_estimate,
        "m_created_at": now,
        "t_id": turn_id,
        "t_tenant_id": tenant_id,
        "t_chat_id": chat_id,
        "t_request_id": request_id,
        "t_requester_type": "user",
        "t_requester_user_id": requester_user_id,
        "t_state": "running",
        "t_web_search_enabled": web_search_enabled,
        "t_started_at": now,
        "t_last_progress_at": now,
        "t_updated_at": now,
    }
    values.update({f"t_{name}": value for name, value in preflight.values().items()})
    await _insert_or_conflict(_INSERT_MESSAGE_AND_TURN.execute(db, **values))


def _message_and_turn_insert() -> sa.Insert:
    def binds(table: sa.Table, prefix: str, names: Iterable[str]) -> dict[str, Any]:
        return {name: sa.bindparam(prefix + name, type_=table.c[name].type) for name in names}

    message = messages.insert().values(binds(messages, "m_", _USER_MESSAGE_COLUMNS))
    turn_columns = (*_TURN_START_COLUMNS, *Preflight.__slots__)
    turn = chat_turns.insert().values(binds(chat_turns, "t_", turn_columns))
    return turn.add_cte(message.cte("new_message"))


_INSERT_MESSAGE_AND_TURN = Prepared(
    _message_and_turn_insert(), "insert user message and turn", dialect="postgresql"
)


async def insert_answer(
    db: databases.Database,
    *,
    turn_id: uuid.UUID,
    message_id: uuid.UUID,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    request_id: uuid.UUID,
    content: str,
    model: str,
    provider_response_id: str | None,
    input_tokens: int,
    output_tokens: int,
    cache_read_input_tokens: int,
    cache_write_input_tokens: int,
    reasoning_tokens: int,
    token_estimate: int,
    features_used: Sequence[str],
    now: dt.datetime,
) -> None:
    """A turn's assistant message and the turn's link to it (`assistant_message_id`).

    On PostgreSQL one statement (the insert as a data-modifying CTE of the link's update; the foreign key is
    checked at the statement's end, when the message exists): a round trip less in every finalization that
    stores an answer. SQLite runs the two statements.
    """
    values: dict[str, Any] = {
        "id": message_id,
        "tenant_id": tenant_id,
        "chat_id": chat_id,
        "request_id": request_id,
        "role": "assistant",
        "content": content,
        "token_estimate": token_estimate,
        "provider_response_id": provider_response_id,
        "features_used": list(features_used),
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": cache_read_input_tokens,
        "cache_write_input_tokens": cache_write_input_tokens,
        "reasoning_tokens": reasoning_tokens,
        "model": model,
        "created_at": now,
    }
    if db.url.dialect == "postgresql":
        await _INSERT_ANSWER_AND_LINK.execute(
            db, b_turn_id=turn_id, **{f"m_{name}": value for name, value in values.items()}
        )
        return
    await _INSERT_MESSAGE.execute(db, **values)
    await _SET_ASSISTANT_MESSAGE.execute(db, b_turn_id=turn_id, message_id=message_id)


def _answer_insert_and_link() -> sa.Update:
    answer = messages.insert().values(
        {name: sa.bindparam(f"m_{name}", type_=messages.c[name].type) for name in _ASSISTANT_MESSAGE_COLUMNS}
    )
    link = (
        chat_turns.update()
        .where(chat_turns.c.id == sa.bindparam("b_turn_id"))
        .values(assistant_message_id=sa.bindparam("m_id", type_=messages.c.id.type))
    )
    return link.add_cte(answer.cte("new_answer"))


_INSERT_ANSWER_AND_LINK = Prepared(
    _answer_insert_and_link(), "insert answer and link its turn", dialect="postgresql"
)


_GET_MESSAGE = Prepared(
    sa.select(*_MESSAGE_COLUMNS).where(messages.c.id == sa.bindparam("message_id")), "get message"
)
_NEWEST_LIVE_MESSAGE = Prepared(
    sa.select(*_MESSAGE_COLUMNS)
    .where(messages.c.chat_id == sa.bindparam("chat_id"), messages.c.deleted_at.is_(None))
    .order_by(messages.c.created_at.desc(), messages.c.id.desc())
    .limit(1),
    "newest live message",
)


def _newest_with_tokens(table: sa.FromClause, *columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """`columns` of the chat's newest live assistant message (in `table`: messages or an alias) that
    reported any tokens: the prior context tokens' row."""
    return (
        sa.select(*columns)
        .where(
            table.c.chat_id == sa.bindparam("chat_id"),
            table.c.role == "assistant",
            table.c.deleted_at.is_(None),
            sa.or_(table.c.input_tokens > 0, table.c.output_tokens > 0),
        )
        .order_by(table.c.created_at.desc(), table.c.id.desc())
        .limit(1)
    )


_PRIOR = messages.alias("prior")
# input + output tokens of that message, as a scalar subquery (the first look's).
_PRIOR_TOKENS: Final = _newest_with_tokens(
    _PRIOR, _PRIOR.c.input_tokens + _PRIOR.c.output_tokens
).scalar_subquery()
_PRIOR_CONTEXT_TOKENS = Prepared(
    _newest_with_tokens(messages, messages.c.input_tokens, messages.c.output_tokens), "prior context tokens"
)


async def get_message(db: databases.Database, message_id: uuid.UUID) -> MessageRow | None:
    record = await _GET_MESSAGE.fetch_one(db, message_id=message_id)
    return MessageRow.from_record(record) if record is not None else None


async def user_message_of(
    db: databases.Database, chat_id: uuid.UUID, request_id: uuid.UUID
) -> MessageRow | None:
    """The live user message of a turn (retry copies its content)."""
    record = await db.fetch_one(
        sa.select(*_MESSAGE_COLUMNS).where(
            messages.c.chat_id == chat_id,
            messages.c.request_id == request_id,
            messages.c.role == "user",
            messages.c.deleted_at.is_(None),
        )
    )
    return MessageRow.from_record(record) if record is not None else None


async def newest_live_message(db: databases.Database, chat_id: uuid.UUID) -> MessageRow | None:
    """The snapshot boundary: the chat's newest live message by (created_at, id)."""
    record = await _NEWEST_LIVE_MESSAGE.fetch_one(db, chat_id=chat_id)
    return MessageRow.from_record(record) if record is not None else None


async def prior_context_tokens(db: databases.Database, chat_id: uuid.UUID) -> int:
    """input + output tokens of the newest live assistant message that reported any tokens."""
    record = await _PRIOR_CONTEXT_TOKENS.fetch_one(db, chat_id=chat_id)
    if record is None:
        return 0
    return int(record["input_tokens"]) + int(record["output_tokens"])


@dataclass(frozen=True, slots=True)
class Boundary:
    """A `(created_at, id)` position in a chat's message order."""

    created_at: dt.datetime
    message_id: uuid.UUID


async def context_history(
    db: databases.Database,
    chat_id: uuid.UUID,
    *,
    boundary: Boundary | None,
    frontier: Boundary | None,
    limit: int,
    exclude_request_id: uuid.UUID | None = None,
) -> list[MessageRow]:
    """History offered to context assembly, oldest first: live rows with a request_id, not compressed,
    at or before `boundary` (None: the chat had no messages), after the summary `frontier`; the newest
    `limit` of them. `exclude_request_id` (the turn being assembled) never counts as its own history, even
    when a row dated after it moved the boundary past it."""
    if boundary is None or limit <= 0:
        return []
    values: dict[str, Any] = {
        "chat_id": chat_id,
        "boundary_at": boundary.created_at,
        "boundary_id": boundary.message_id,
        "limit": limit,
    }
    if frontier is not None:
        values["frontier_at"], values["frontier_id"] = frontier.created_at, frontier.message_id
    if exclude_request_id is not None:
        values["exclude_request_id"] = exclude_request_id
    statement = _CONTEXT_HISTORY[frontier is not None, exclude_request_id is not None]
    rows = await statement.fetch_values(db, **values)
    return [_history_row(row) for row in reversed(rows)]


def _history_row(values: Sequence[Any]) -> MessageRow:
    """A MessageRow from the values of _MESSAGE_COLUMNS by position, normalized as `from_record` does."""
    id_, chat_id, request_id, role, content, model, ins, outs, created_at, deleted_at = values
    return MessageRow(
        as_uuid(id_),
        as_uuid(chat_id),
        None if request_id is None else as_uuid(request_id),
        role,
        content,
        model,
        ins,
        outs,
        fast_utc(created_at),
        None if deleted_at is None else fast_utc(deleted_at),
    )


def after_position(rows: list[MessageRow], position: Boundary) -> list[MessageRow]:
    """The rows (oldest first) after `position` in the (created_at, id) order, as `frontier` selects them."""
    return [
        row
        for row in rows
        if row.created_at > position.created_at
        or (row.created_at == position.created_at and row.id > position.message_id)
    ]


def _context_history(with_frontier: bool, with_exclusion: bool) -> Prepared:
    query = sa.select(*_MESSAGE_COLUMNS).where(
        messages.c.chat_id == sa.bindparam("chat_id"),
        messages.c.deleted_at.is_(None),
        messages.c.request_id.is_not(None),
        messages.c.is_compressed.is_(False),
        _position_or(
            messages.c.created_at < sa.bindparam("boundary_at", type_=UtcDateTime),
            messages.c.created_at == sa.bindparam("boundary_at", type_=UtcDateTime),
            messages.c.id <= sa.bindparam("boundary_id", type_=sa.Uuid),
        ),
    )
    if with_frontier:
        query = query.where(
            _position_or(
                messages.c.created_at > sa.bindparam("frontier_at", type_=UtcDateTime),
                messages.c.created_at == sa.bindparam("frontier_at", type_=UtcDateTime),
                messages.c.id > sa.bindparam("frontier_id", type_=sa.Uuid),
            )
        )
    if with_exclusion:
        query = query.where(messages.c.request_id != sa.bindparam("exclude_request_id"))
    query = query.order_by(messages.c.created_at.desc(), messages.c.id.desc()).limit(sa.bindparam("limit"))
    name = f"context history (frontier={with_frontier}, exclusion={with_exclusion})"
    prepared = Prepared(query, name)
    prepared.json_rows = json_rows(query, name)  # SQLite's (db/repos/json_rows.py): a turn reads it first
    return prepared


def _position_or(
    strictly: sa.ColumnElement[bool], same_time: sa.ColumnElement[bool], tiebreak: sa.ColumnElement[bool]
) -> sa.ColumnElement[bool]:
    return sa.or_(strictly, sa.and_(same_time, tiebreak))


_CONTEXT_HISTORY = {
    (frontier, exclusion): _context_history(frontier, exclusion)
    for frontier in (False, True)
    for exclusion in (False, True)
}


@dataclass(frozen=True, slots=True)
class SummaryRow:
    text: str
    token_estimate: int
    frontier: Boundary


_THREAD_SUMMARY = Prepared(
    sa.select(
        thread_summaries.c.summary_text,
        thread_summaries.c.token_estimate,
        thread_summaries.c.summarized_up_to_created_at,
        thread_summaries.c.summarized_up_to_message_id,
    ).where(thread_summaries.c.chat_id == sa.bindparam("chat_id")),
    "thread summary",
)


async def thread_summary(db: databases.Database, chat_id: uuid.UUID) -> SummaryRow | None:
    record = await _THREAD_SUMMARY.fetch_one(db, chat_id=chat_id)
    if record is None:
        return None
    return SummaryRow(
        text=record["summary_text"],
        token_estimate=int(record["token_estimate"]),
        frontier=Boundary(
            as_utc(record["summarized_up_to_created_at"]), as_uuid(record["summarized_up_to_message_id"])
        ),
    )


# --- attachments of a turn ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AttachmentRow:
    id: uuid.UUID
    chat_id: uuid.UUID
    uploaded_by_user_id: uuid.UUID
    filename: str
    content_type: str
    size_bytes: int
    status: str
    attachment_kind: str
    provider_file_id: str | None
    for_file_search: bool
    for_code_interpreter: bool
    doc_summary: str | None
    deleted_at: dt.datetime | None

    @classmethod
    def from_record(cls, record: Any) -> AttachmentRow:
        return cls(**_plain(record, cls.__slots__))  # type: ignore[attr-defined]


_ATTACHMENT_COLUMNS = [attachments.c[name] for name in AttachmentRow.__slots__]  # type: ignore[attr-defined]


async def attachments_by_id(
    db: databases.Database, chat_id: uuid.UUID, attachment_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, AttachmentRow]:
    """The chat's attachments among `attachment_ids` (deleted ones included; callers check)."""
    ids = list(attachment_ids)
    if not ids:
        return {}
    records = await db.fetch_all(
        # One equality per id: `databases` does not run the UUID bind processor on expanding IN parameters
        # on SQLite (and a message has at most 20 attachments).
        sa.select(*_ATTACHMENT_COLUMNS).where(
            attachments.c.chat_id == chat_id, sa.or_(*(attachments.c.id == i for i in ids))
        )
    )
    rows = [AttachmentRow.from_record(r) for r in records]
    return {row.id: row for row in rows}


async def message_attachments_of(
    db: databases.Database, chat_id: uuid.UUID, message_id: uuid.UUID
) -> list[AttachmentRow]:
    """Live attachments linked to a message, in link order."""
    records = await db.fetch_all(
        sa.select(*_ATTACHMENT_COLUMNS)
        .select_from(
            message_attachments.join(
                attachments,
                sa.and_(
                    attachments.c.id == message_attachments.c.attachment_id,
                    attachments.c.chat_id == message_attachments.c.chat_id,
                ),
            )
        )
        .where(
            message_attachments.c.chat_id == chat_id,
            message_attachments.c.message_id == message_id,
            attachments.c.deleted_at.is_(None),
        )
        .order_by(message_attachments.c.created_at, attachments.c.id)
    )
    return [AttachmentRow.from_record(r) for r in records]


async def link_attachments(
    db: databases.Database,
    *,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    message_id: uuid.UUID,
    attachment_ids: Sequence[uuid.UUID],
    now: dt.datetime,
) -> None:
    for attachment_id in attachment_ids:
        await db.execute(
            message_attachments.insert().values(
                tenant_id=tenant_id,
                chat_id=chat_id,
                message_id=message_id,
                attachment_id=attachment_id,
                created_at=now,
            )
        )


def _ready_document(*where: Any) -> sa.ColumnElement[bool]:
    return sa.and_(
        *where,
        attachments.c.deleted_at.is_(None),
        attachments.c.status == "ready",
        attachments.c.attachment_kind == "document",
    )


async def ready_documents(db: databases.Database, chat_id: uuid.UUID) -> list[AttachmentRow]:
    """The chat's live, ready document attachments (file search / code interpreter inputs)."""
    records = await _READY_DOCUMENTS.fetch_all(db, chat_id=chat_id)
    return [AttachmentRow.from_record(r) for r in records]


_READY_DOCUMENTS = Prepared(
    sa.select(*_ATTACHMENT_COLUMNS)
    .where(_ready_document(attachments.c.chat_id == sa.bindparam("chat_id")))
    .order_by(attachments.c.created_at, attachments.c.id),
    "ready documents",
)
_VECTOR_STORE_ID = Prepared(
    sa.select(chat_vector_stores.c.vector_store_id).where(
        chat_vector_stores.c.tenant_id == sa.bindparam("tenant_id"),
        chat_vector_stores.c.chat_id == sa.bindparam("chat_id"),
    ),
    "vector store id",
)


async def vector_store_id(db: databases.Database, tenant_id: uuid.UUID, chat_id: uuid.UUID) -> str | None:
    value = await _VECTOR_STORE_ID.fetch_val(db, tenant_id=tenant_id, chat_id=chat_id)
    return str(value) if value else None


# --- a send's first look --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FirstLook:
    """What a send reads before its transaction, in one statement (see `first_look`)."""

    chat: chats_repo.ChatRecord
    # Flags only: what they stand for is read on its own when set (rarely: a replay, a chat with documents).
    request_used: bool
    turn_running: bool
    has_ready_documents: bool
    vector_store_id: str | None
    # The snapshot boundary (the newest live message, None in a chat without one) and the prior context
    # tokens, taken before the send's transaction as the original does (original-domain.md §2, steps 4-5).
    boundary: Boundary | None = None
    prior_context_tokens: int = 0
    # The chat's thread summary (None: it has none yet), read in the same statement: a send's context
    # reads then only the history after its frontier.
    summary: SummaryRow | None = None


def _newest_live(column: sa.Column[Any]) -> sa.ScalarSelect[Any]:
    """`column` of the chat's newest live message by (created_at, id)."""
    return (
        sa.select(column)
        .where(messages.c.chat_id == sa.bindparam("chat_id"), messages.c.deleted_at.is_(None))
        .order_by(messages.c.created_at.desc(), messages.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


_FIRST_LOOK_QUERY: Final = (
    sa.select(
        *chats_repo.OWNED_CHAT_COLUMNS,
        sa.exists()
        .where(
            chat_turns.c.chat_id == sa.bindparam("chat_id"),
            chat_turns.c.request_id == sa.bindparam("request_id"),
        )
        .label("request_used"),
        sa.exists()
        .where(
            chat_turns.c.chat_id == sa.bindparam("chat_id"), _IS_RUNNING, chat_turns.c.deleted_at.is_(None)
        )
        .label("turn_running"),
        sa.exists()
        .where(_ready_document(attachments.c.chat_id == sa.bindparam("chat_id")))
        .label("documents"),
        sa.select(chat_vector_stores.c.vector_store_id)
        .where(
            chat_vector_stores.c.tenant_id == sa.bindparam("tenant_id"),
            chat_vector_stores.c.chat_id == sa.bindparam("chat_id"),
        )
        .scalar_subquery()
        .label("vector_store_id"),
        _newest_live(messages.c.created_at).label("newest_at"),
        _newest_live(messages.c.id).label("newest_id"),
        _PRIOR_TOKENS.label("prior_context_tokens"),
        thread_summaries.c.summary_text,
        thread_summaries.c.token_estimate,
        thread_summaries.c.summarized_up_to_created_at,
        thread_summaries.c.summarized_up_to_message_id,
    )
    .select_from(chats.outerjoin(thread_summaries, thread_summaries.c.chat_id == chats.c.id))
    .where(chats.c.id == sa.bindparam("chat_id"), chats_repo.OWNED_LIVE)
)
_FIRST_LOOK: Final = Prepared(_FIRST_LOOK_QUERY, "first look")
# Seventeen columns: SQLite's JSON form reads them as one (db/repos/json_rows.py).
_FIRST_LOOK.json_rows = json_rows(_FIRST_LOOK_QUERY, "first look")


async def first_look(
    db: databases.Database,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    chat_id: uuid.UUID,
    request_id: uuid.UUID,
) -> FirstLook | None:
    """The owner's live chat (None: not found) with what a send checks before its transaction: whether
    `request_id` has a turn in it (soft-deleted ones included), whether a live turn runs, whether it has
    ready documents, its vector store, and its thread summary. One statement, so one snapshot (and one
    round trip on PostgreSQL) instead of six reads."""
    rows = await _FIRST_LOOK.fetch_values(
        db, chat_id=chat_id, tenant_id=tenant_id, user_id=user_id, request_id=request_id
    )
    if not rows:
        return None
    values = rows[0]
    store, newest_at, newest_id, prior, summary_text, summary_tokens, summary_at, summary_id = values[9:17]
    return FirstLook(
        chat=chats_repo.owned_chat(tenant_id, user_id, values),
        request_used=bool(values[6]),
        turn_running=bool(values[7]),
        has_ready_documents=bool(values[8]),
        vector_store_id=str(store) if store else None,
        boundary=None if newest_id is None else Boundary(fast_utc(newest_at), fast_uuid(newest_id)),
        prior_context_tokens=int(prior or 0),
        summary=None
        if summary_id is None
        else SummaryRow(
            text=summary_text,
            token_estimate=int(summary_tokens),
            frontier=Boundary(as_utc(summary_at), as_uuid(summary_id)),
        ),
    )
