"""Tracing the SQL a test runs on SQLite and planning it: what `test_query_plans` tests use to prove that no
statement reads a whole table (a cost that grows with every tenant's rows, not the chat's)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from minichat_host.db import sqlite_inline
from minichat_host.db.tables import metadata

_LITERALS = re.compile(r"'(?:[^']|'')*'|x'[0-9a-f]*'|\b\d+(?:\.\d+)?\b")
_TABLE_SCAN = re.compile(r"^SCAN (?!CONSTANT ROW)([A-Za-z_]\w*)")
_PLANNED = re.compile(r"\s*(SELECT|UPDATE|DELETE|INSERT|WITH)\b", re.IGNORECASE)


def trace_statements(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """From now on, every statement of a connection the service opens (one example per shape of SQL, its
    literals aside). Call before the app starts: pooled connections are traced from their opening."""
    traced: dict[str, str] = {}

    def trace(statement: str) -> None:
        if not statement.startswith("--"):
            traced.setdefault(_LITERALS.sub("?", statement), statement)

    opened = sqlite_inline.InlineConnection.open.__func__  # type: ignore[attr-defined]

    def open_traced(cls: type[sqlite_inline.InlineConnection], database: str, **options: Any) -> Any:
        connection = opened(cls, database, **options)
        connection.raw.set_trace_callback(trace)
        return connection

    monkeypatch.setattr(sqlite_inline.InlineConnection, "open", classmethod(open_traced))
    return traced


def table_scans(database: Path, statements: dict[str, str]) -> dict[str, list[str]]:
    """The statements whose plan reads a whole table, with those plan steps. A derived table (the rows of
    a multi-row update, say) is scanned: it is the statement's own."""
    planner = sqlite3.connect(database)
    try:
        scans: dict[str, list[str]] = {}
        for statement in statements.values():
            if not _PLANNED.match(statement):
                continue
            plan = [row[3] for row in planner.execute(f"EXPLAIN QUERY PLAN {statement}")]
            found = [step for step in plan if (m := _TABLE_SCAN.match(step)) and m[1] in metadata.tables]
            if found:
                scans[" ".join(statement.split())[:200]] = found
        return scans
    finally:
        planner.close()
