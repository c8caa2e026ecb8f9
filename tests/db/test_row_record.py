"""`row_record` (db/repos/common.py): the hot rows' value objects behave as the frozen dataclasses they are
checked as (mypy rejects assignments to their fields), built without a frozen `__init__`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from minichat_host.db.repos.chats import ChatRecord, CountedChat
from minichat_host.db.repos.messages import MessageRecord
from minichat_host.db.repos.turns import TurnRow


def _chat(title: str | None = "t") -> ChatRecord:
    ids = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    return ChatRecord(*ids, model="m", title=title, is_temporary=False, created_at=now, updated_at=now)


def test_value_semantics_of_a_frozen_dataclass() -> None:
    a, b = _chat(), _chat()
    assert a == b and hash(a) == hash(b) and a is not b
    assert {a, b} == {a} and {CountedChat(a, 1), CountedChat(b, 1)} == {CountedChat(a, 1)}
    changed = dataclasses.replace(a, title="other")
    assert changed != a and changed.title == "other" and a.title == "t"
    assert dataclasses.astuple(a)[3:5] == ("m", "t")


def test_slotted_dataclasses() -> None:
    for cls in (ChatRecord, CountedChat, MessageRecord, TurnRow):
        assert dataclasses.is_dataclass(cls) and "__slots__" in vars(cls)
        assert not hasattr(cls, "__dict__") or "__dict__" not in cls.__slots__
    assert not hasattr(_chat(), "__dict__")
