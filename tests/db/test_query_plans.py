"""The hot lookups use the indexes they were written for (SQLite's query planner, on the migrated schema).

A partial index only serves a query whose WHERE implies the index's own; a bound parameter never does, so
these statements write their constants into the SQL. A regression shows up here as a SCAN or another index.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from minichat_host.db.engine import sqlite_path
from minichat_host.db.repos import chats as chats_repo
from minichat_host.db.repos import messages as messages_repo
from minichat_host.db.repos import pagination, turns

DIALECT = sqlite_dialect.dialect(paramstyle="qmark")


def _plan(url: str, statement: sa.ClauseElement, args: list[object]) -> str:
    sql = statement.compile(dialect=DIALECT).string
    connection = sqlite3.connect(sqlite_path(url))
    try:
        return " | ".join(row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {sql}", args))
    finally:
        connection.close()


def test_the_running_turn_of_a_chat_is_one_partial_index_probe(sqlite_migrated_db_url: str) -> None:
    plan = _plan(sqlite_migrated_db_url, turns._RUNNING_TURN.statement, [uuid.uuid4().hex])
    assert "USING INDEX uq_chat_turns_one_running (chat_id=?)" in plan, plan


def test_the_watchdog_scans_only_running_turns(sqlite_migrated_db_url: str) -> None:
    args = [dt.datetime(2026, 1, 1).isoformat(" "), 100, 0]  # LIMIT ? OFFSET ?
    plan = _plan(sqlite_migrated_db_url, turns._STALE_RUNNING.statement, args)
    assert "USING INDEX ix_chat_turns_running_progress" in plan, plan
    assert "SCAN chat_turns" not in plan, plan


@pytest.mark.parametrize("form", ["plain", "json rows"])
def test_a_message_page_checks_its_owner_and_reads_its_extras_by_key(
    sqlite_migrated_db_url: str, form: str
) -> None:
    # The owner check folded into the page query (one statement less per page) is one probe of the chats
    # primary key, and the page itself still walks the chat's live-message index; in SQLite's JSON form
    # of the rows (db/repos/json_rows.py) too.
    prepared, _ = pagination._keyset_statements(
        messages_repo._OWNED_LISTING, messages_repo.ORDER_CREATED_ASC, True, False, False
    )
    statement = prepared.statement if form == "plain" else prepared.json_rows.prepared.statement
    compiled = statement.compile(dialect=DIALECT)
    values = {"tenant_id": uuid.uuid4().hex, "chat_id": uuid.uuid4().hex, "user_id": uuid.uuid4().hex}
    args = [values.get(name, 21) for name in compiled.positiontup or ()]
    plan = _plan(sqlite_migrated_db_url, statement, args)
    assert "SEARCH chats USING INDEX sqlite_autoindex_chats_1 (id=?)" in plan, plan
    assert "USING INDEX ix_messages_chat_created (chat_id=?)" in plan, plan
    # The owner's reaction and the attachment flag of each message: unique-key probes, not scans.
    reactions_key = "sqlite_autoindex_message_reactions_2 (message_id=? AND user_id=?)"
    links_key = "sqlite_autoindex_message_attachments_1 (chat_id=? AND message_id=?)"
    assert f"SEARCH message_reactions USING INDEX {reactions_key}" in plan, plan
    assert f"SEARCH message_attachments USING INDEX {links_key}" in plan, plan
    assert "SCAN" not in plan, plan


@pytest.mark.parametrize("form", ["plain", "json rows"])
def test_a_chat_page_walks_the_owners_index_in_order(sqlite_migrated_db_url: str, form: str) -> None:
    prepared, _ = pagination._keyset_statements(
        chats_repo._LISTING, chats_repo.ORDER_UPDATED_DESC, True, False, True
    )
    statement = prepared.statement if form == "plain" else prepared.json_rows.prepared.statement
    compiled = statement.compile(dialect=DIALECT)
    values = {
        "tenant_id": uuid.uuid4().hex,
        "user_id": uuid.uuid4().hex,
        "k_primary": "2026-03-01 09:00:00.000000",
        "k_tiebreak": uuid.uuid4().hex,
    }
    args = [values.get(name, 21) for name in compiled.positiontup or ()]
    plan = _plan(sqlite_migrated_db_url, statement, args)
    assert "USING INDEX ix_chats_owner_updated (tenant_id=? AND user_id=?" in plan, plan
    assert "TEMP B-TREE" not in plan and "SCAN" not in plan, plan
