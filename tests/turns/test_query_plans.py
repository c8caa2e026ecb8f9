"""Every statement of a chat's life on SQLite is answered through an index: none reads a whole table.

The statements are the ones the service really runs (traced on its connections) while a chat streams turns
with attachments, replays one, reads its turns and messages and is deleted; each is then planned with
`EXPLAIN QUERY PLAN`. A `SCAN <table>` is a cost that grows with every tenant's rows rather than the chat's
(the turn start's documents read did that until migration 0004).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from query_plans import table_scans, trace_statements

from minichat_host.db.engine import sqlite_path
from turns.conftest import PREFIX, Harness, seed_attachment


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_a_chats_statements_all_use_an_index(
    make_harness: Callable[..., Any], migrated_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced = trace_statements(monkeypatch)
    harness: Harness = await make_harness()
    chat_id = await harness.create_chat("local-premium")
    await seed_attachment(harness.db, chat_id)
    image = await seed_attachment(harness.db, chat_id, kind="image")
    first = await harness.stream(chat_id, {"content": "one", "attachment_ids": [image]})
    assert first.terminal.event == "done", first.terminal
    request_id = str(uuid.uuid4())
    second = await harness.stream(chat_id, {"content": "two", "request_id": request_id})
    assert second.terminal.event == "done", second.terminal
    replayed = await harness.stream(chat_id, {"content": "two", "request_id": request_id})
    assert replayed.frames[0].data["is_new_turn"] is False
    await harness.outbox.run_once()
    assert (await harness.turn(chat_id, request_id))["state"] == "done"
    assert (await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")).status == 200
    assert (await harness.client.get(f"{PREFIX}/chats")).status == 200
    assert (await harness.client.delete(f"{PREFIX}/chats/{chat_id}/turns/{request_id}")).status == 204
    assert (await harness.client.delete(f"{PREFIX}/chats/{chat_id}")).status == 204
    await harness.outbox.run_once()

    assert len(traced) > 30, "the trace saw too few statements to mean anything"
    assert table_scans(sqlite_path(migrated_db_url), traced) == {}
