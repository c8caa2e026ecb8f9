"""The original's smoke flow, steps 8-11 (original-api.md §8), with the offline local provider."""

from __future__ import annotations

import uuid

import pytest

from turns.conftest import PREFIX, Harness, assert_grammar

pytestmark = pytest.mark.both_loops  # the server and the provider client on asyncio's loop and on uvloop's


async def test_two_turns_four_messages_reactions_and_turns(harness: Harness) -> None:
    chat_id = await harness.create_chat("local-premium")
    first = await harness.stream(chat_id, {"content": "What is 2+2? Answer with just the number."})
    second = await harness.stream(chat_id, {"content": "And what is 3+3?"})
    for streamed in (first, second):
        assert streamed.status == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.headers["cache-control"] == "no-cache"
        assert_grammar(streamed.frames)
        assert streamed.terminal.event == "done", streamed.terminal
        started = streamed.frames[0].data
        assert started["is_new_turn"] is True
        uuid.UUID(started["message_id"])
        assert streamed.text
    msg1 = first.frames[0].data["message_id"]

    response = await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")
    assert response.status == 200
    items = (await response.json())["items"]
    assert len(items) == 4
    assert [m["role"] for m in items] == ["user", "assistant", "user", "assistant"]
    assert items[1]["id"] == msg1
    assert items[1]["content"] == first.text

    for value in ("like", "dislike"):
        response = await harness.client.put(
            f"{PREFIX}/chats/{chat_id}/messages/{msg1}/reaction", json={"reaction": value}
        )
        assert response.status == 200, await response.text()
        assert (await response.json())["reaction"] == value
    response = await harness.client.delete(f"{PREFIX}/chats/{chat_id}/messages/{msg1}/reaction")
    assert response.status == 204

    request_ids = list(dict.fromkeys(m["request_id"] for m in items))
    assert len(request_ids) == 2
    for rid in request_ids:
        status = await harness.turn(chat_id, rid)
        assert status["request_id"] == rid
        assert status["state"] == "done"
    response = await harness.client.delete(f"{PREFIX}/chats/{chat_id}/turns/{request_ids[-1]}")
    assert response.status == 204
    assert await response.read() == b""
    await harness.delivered(2)
    assert await harness.reserved() == 0
