"""`prime` (db/prepared.py): the statements built so far compiled for one dialect before any request."""

from __future__ import annotations

import weakref

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from minichat_host.db import prepared as prepared_module
from minichat_host.db.prepared import Prepared, prime
from minichat_host.db.tables import chats

SQLITE = sqlite.dialect()


@pytest.fixture(autouse=True)
def _only_this_modules_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    # The dialects here are not the engines' (configured by databases): the app's statements stay out.
    monkeypatch.setattr(prepared_module, "_BUILT", weakref.WeakSet())


def test_prime_compiles_fixed_statements_and_the_declared_column_sets_once() -> None:
    select = Prepared(sa.select(chats.c.title).where(chats.c.id == sa.bindparam("chat_id")), "title")
    insert = Prepared(chats.insert(), "insert chat", warm_columns=[("id", "title"), ("id", "model")])
    undeclared = Prepared(chats.update(), "update chat")
    only_postgresql = Prepared(sa.select(chats.c.id), "ids", dialect="postgresql")

    assert prime(SQLITE) == 3
    assert set(select._forms) == {("sqlite", None)}
    assert set(insert._forms) == {
        ("sqlite", frozenset({"id", "title"})),
        ("sqlite", frozenset({"id", "model"})),
    }
    # An INSERT / UPDATE without declared column sets is compiled on first use, as before.
    assert undeclared._forms == {}
    assert only_postgresql._forms == {}
    # A call with a declared set finds its form; a second prime has nothing left to do for these.
    assert (
        insert.form(SQLITE, insert.column_keys({"id": 1, "title": "t"}))
        is insert._forms[("sqlite", frozenset({"id", "title"}))]
    )
    assert prime(SQLITE) == 0

    prime(postgresql.asyncpg.dialect())
    assert ("postgresql", None) in only_postgresql._forms
    assert ("postgresql", None) in select._forms


def test_a_statement_that_cannot_be_prepared_does_not_stop_prime() -> None:
    expanding = sa.bindparam("ids", expanding=True)
    values_dependent = Prepared(sa.select(chats.c.id).where(chats.c.id.in_(expanding)))
    fixed = Prepared(sa.select(chats.c.title), "titles")

    assert prime(SQLITE) == 1
    assert values_dependent._forms == {}
    assert ("sqlite", None) in fixed._forms


def test_statements_no_longer_referenced_are_forgotten() -> None:
    Prepared(sa.select(chats.c.title), "garbage")
    assert len(prepared_module._BUILT) == 0
