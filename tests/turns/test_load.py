"""100 turns at once-ish: many chats streaming in parallel, clients that disconnect mid-stream, replays,
and parallel sends on one chat — against the running outbox scheduler. Afterwards every turn is terminal,
no credits are left reserved, each finalized turn delivered exactly one usage event (by dedupe key) and
one turn audit event to the plugins, and no request got a 5xx."""

from __future__ import annotations

import asyncio
import collections
import random
import uuid
from typing import Any

import sqlalchemy as sa
from fakes.openai_server import Script

from minichat_host.db.tables import chat_turns
from turns.conftest import PREFIX, Harness, read_stream

CHATS = 20
TURNS_PER_CHAT = 5


async def test_hundred_turns(make_harness: Any) -> None:
    harness: Harness = await make_harness(outbox={"enabled": True, "poll_interval_seconds": 0.2})
    assert harness.outbox.running
    harness.fake.default_script = Script(
        text="token " * 12, token_gap_ms=4, input_tokens=30, output_tokens=12
    )
    statuses: collections.Counter[int] = collections.Counter()
    rng = random.Random(4)

    async def send(chat_id: str, body: dict[str, Any], *, disconnect: bool = False) -> None:
        response = await harness.client.post(f"{PREFIX}/chats/{chat_id}/messages:stream", json=body)
        statuses[response.status] += 1
        if disconnect and response.status == 200:
            await response.content.readuntil(b"event: delta")
            response.close()
            return
        streamed = await read_stream(response)
        if response.status == 200:
            assert streamed.frames[-1].event in ("done", "error")

    async def chat_session(index: int) -> None:
        model = "fake-standard" if index % 2 else "local-premium"
        chat_id = await harness.create_chat(model)
        completed: list[str] = []
        for turn in range(TURNS_PER_CHAT):
            request_id = str(uuid.uuid4())
            roll = rng.random()
            if roll < 0.2:
                await send(chat_id, {"content": f"bye {turn}", "request_id": request_id}, disconnect=True)
                # The cancelled turn finalizes in the background; wait for the chat to be free again.
                await harness.wait_terminal(chat_id, request_id)
                continue
            if roll < 0.3:
                # Two sends race on one chat: one runs, the other is 409 (or runs after it).
                await asyncio.gather(
                    send(chat_id, {"content": f"race {turn}", "request_id": request_id}),
                    send(chat_id, {"content": f"race2 {turn}"}),
                )
                continue
            await send(chat_id, {"content": f"hello {turn}", "request_id": request_id})
            completed.append(request_id)
            if completed and rng.random() < 0.3:
                await send(chat_id, {"content": "again", "request_id": rng.choice(completed)})

    await asyncio.gather(*(chat_session(i) for i in range(CHATS)))
    await harness.wait_idle()

    rows = await harness.db.fetch_all(sa.select(chat_turns.c.id, chat_turns.c.request_id, chat_turns.c.state))
    assert len(rows) >= CHATS * TURNS_PER_CHAT
    assert all(r["state"] != "running" for r in rows)
    assert await harness.reserved() == 0
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {200, 409}, statuses

    recorder = harness.recorder
    await recorder.wait_for(
        lambda: len(recorder.usage) >= len(rows) and len(recorder.turn_audits()) >= len(rows), 60
    )
    await asyncio.sleep(0.5)  # anything beyond one per turn would show up now
    by_key = recorder.usage_by_key()
    turn_ids = {str(uuid.UUID(str(r["id"]))) for r in rows}
    assert len(by_key) == len(rows) and set(by_key.values()) == {1}
    assert {key.split("/")[1] for key in by_key} == {uuid.UUID(t).hex for t in turn_ids}
    audits = recorder.turn_audits_by_turn()
    assert set(audits) == turn_ids and set(audits.values()) == {1}
