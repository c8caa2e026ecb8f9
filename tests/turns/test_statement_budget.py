"""The statements of the hot paths on SQLite, counted: each one runs on the event loop's thread.

A SQLite statement costs ~70-100 µs of the loop (its binding and the engine's work, docs/performance.md),
and a turn start or a finalization is one loop step that holds back every other stream's next chunk for as
long as it runs. So the statements of a streamed turn and of the four hot JSON endpoints are a budget: a
change that adds one must change this list knowingly (and be measured with `bench/stream.py` or
`bench/api.py`), and a change that removes one shows here too. Counted, not timed: the count is the same on
every machine. The trace sees each statement once (a statement whose triggers run is reported again per
trigger program, with the same text: those repeats are folded).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from minichat_host.db import sqlite_inline
from turns.conftest import PREFIX, Harness

_SHAPE = re.compile(
    r"^\s*(BEGIN IMMEDIATE|COMMIT|ROLLBACK|SELECT|INSERT INTO|UPDATE|DELETE FROM)\b", re.IGNORECASE
)
_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+([a-z_]+)", re.IGNORECASE)


class _StatementLog:
    """Every statement the service's SQLite connections run while `recording`, as `VERB table`."""

    def __init__(self) -> None:
        self.recording = False
        self.statements: list[str] = []
        self._last = ""

    def trace(self, statement: str) -> None:
        # A checkpoint (db/engine.py's WalCheckpointer) may land anywhere: it is not a request's statement.
        if not self.recording or statement.startswith(("--", "PRAGMA")):
            return
        if statement == self._last:  # the same statement again: one of its trigger programs
            return
        self._last = statement
        self.statements.append(_shape(statement))

    def take(self) -> list[str]:
        taken, self.statements, self._last = self.statements, [], ""
        return taken


def _shape(statement: str) -> str:
    verb = _SHAPE.match(statement)
    if verb is None:
        return " ".join(statement.split()[:2])
    word = verb[1].upper()
    if word in ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"):
        return word
    return f"{word.split()[0]} {_outer_table(statement)}"


def _outer_table(statement: str) -> str:
    """The statement's own table: the first FROM / INTO / UPDATE outside parentheses (not a subquery's)."""
    depth = 0
    outer = []
    for char in statement:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        outer.append(char if depth == 0 else " ")
    table = _TABLE.search("".join(outer))
    return table[1] if table else "?"


@pytest.fixture
def statement_log(monkeypatch: pytest.MonkeyPatch) -> _StatementLog:
    log = _StatementLog()
    opened = sqlite_inline.InlineConnection.open.__func__  # type: ignore[attr-defined]

    def open_traced(cls: type[sqlite_inline.InlineConnection], database: str, **options: Any) -> Any:
        connection = opened(cls, database, **options)
        connection.raw.set_trace_callback(log.trace)
        return connection

    monkeypatch.setattr(sqlite_inline.InlineConnection, "open", classmethod(open_traced))
    return log


@pytest.mark.parametrize("engine_name", ["sqlite"])
async def test_a_streamed_turn_and_the_hot_endpoints_run_their_budget_of_statements(
    make_harness: Callable[..., Any], statement_log: _StatementLog
) -> None:
    harness: Harness = await make_harness()
    chat_id = await harness.create_chat()
    # The chat's first turn creates the user's quota rows; the steady state is every turn after it.
    first = await harness.stream(chat_id, {"content": "one"})
    assert first.terminal.event == "done", first.terminal
    request_id = str(uuid.uuid4())

    statement_log.recording = True
    second = await harness.stream(chat_id, {"content": "two", "request_id": request_id})
    assert second.terminal.event == "done", second.terminal
    turn = statement_log.take()
    listed: dict[str, list[str]] = {}
    for name, path in (
        ("list chats", f"{PREFIX}/chats"),
        ("list messages", f"{PREFIX}/chats/{chat_id}/messages"),
        ("get turn", f"{PREFIX}/chats/{chat_id}/turns/{request_id}"),
        ("quota status", f"{PREFIX}/quota/status"),
    ):
        response = await harness.client.get(path)
        assert response.status == 200, (name, await response.text())
        listed[name] = statement_log.take()
    statement_log.recording = False

    assert turn == [
        # The turn start (domain/turns.py), one loop step: the first look (with the thread summary), the
        # history read after it,
        "SELECT chats",
        "SELECT messages",
        # then one write transaction: the quota rows, the reserve, the user's message and the turn.
        "BEGIN IMMEDIATE",
        "SELECT quota_usage",
        "INSERT quota_usage",
        "INSERT messages",
        "INSERT chat_turns",
        "COMMIT",
        # The finalization (domain/finalize.py), one transaction: the compare-and-set, the settlement and
        # the usage read back for the warnings, the answer and the turn's link to it, the usage and audit
        # events into the outbox (a body and its partition's row each).
        "BEGIN IMMEDIATE",
        "UPDATE chat_turns",
        "UPDATE quota_usage",
        "SELECT quota_usage",
        "INSERT messages",
        "UPDATE chat_turns",
        "INSERT outbox_body",
        "INSERT outbox_incoming",
        "INSERT outbox_body",
        "INSERT outbox_incoming",
        "COMMIT",
    ]
    # One statement each (no count query, no policy or ownership read of its own).
    assert listed == {
        "list chats": ["SELECT chats"],
        "list messages": ["SELECT messages"],
        "get turn": ["SELECT chat_turns"],
        "quota status": ["SELECT quota_usage"],
    }
