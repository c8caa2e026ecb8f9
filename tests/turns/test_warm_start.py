"""A fresh app is ready before its first request: its statements compiled, its providers built."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from minichat_host.app import PROVIDERS_KEY
from minichat_host.db import prepared as prepared_module
from minichat_host.db.repos import turns
from turns.conftest import Harness


def _forms() -> set[tuple[str, Any]]:
    return {(prepared.name, key) for prepared in list(prepared_module._BUILT) for key in prepared._forms}


async def test_the_first_turns_of_a_fresh_app_compile_no_statement(
    make_harness: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a new process: no statement compiled yet (the other tests' forms come back afterwards).
    for prepared in list(prepared_module._BUILT):
        monkeypatch.setattr(prepared, "_forms", {})
    harness: Harness = await make_harness()
    chat_id = await harness.create_chat("fake-standard")
    primed = _forms()
    assert primed, "the app compiled nothing at start-up"

    completed = await harness.stream(chat_id, {"content": "Hello"})
    assert completed.terminal.event == "done", completed.terminal
    # The second turn of a chat reads its history; a local provider finishes without a response id.
    again = await harness.stream(chat_id, {"content": "And again"})
    assert again.terminal.event == "done", again.terminal
    local_chat = await harness.create_chat("local-standard")
    local = await harness.stream(local_chat, {"content": "Hello"})
    assert local.terminal.event == "done", local.terminal

    # A long run's progress touch (every 30 s of deltas) finds its form too.
    turn = await harness.turn_row(chat_id, completed.frames[0].data["request_id"])
    await turns.touch_progress(harness.db, turn.id, dt.datetime.now(dt.UTC))

    assert _forms() - primed == set()


async def test_every_configured_provider_is_built_at_start_up(harness: Harness) -> None:
    registry = harness.app[PROVIDERS_KEY]
    assert set(registry._built) == set(registry.provider_ids()) == {"local", "fake"}
    built = dict(registry._built)
    assert {provider_id: registry.get(provider_id) for provider_id in built} == built
