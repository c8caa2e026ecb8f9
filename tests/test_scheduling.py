"""`after_ready_io`: background work resumes behind the socket reads that are ready, and what they wake."""

from __future__ import annotations

import asyncio
import socket

import pytest

from minichat_host.scheduling import after_ready_io


async def _ordering(yield_with: str) -> list[str]:
    loop = asyncio.get_running_loop()
    order: list[str] = []
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    chunk_arrived: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:  # a provider connection's read callback
        reader.recv(16)
        order.append("read")
        chunk_arrived.set_result(None)

    async def pump() -> None:  # the task that relays the chunk
        await chunk_arrived
        order.append("relay")

    async def background() -> None:
        await (after_ready_io() if yield_with == "after_ready_io" else asyncio.sleep(0))
        order.append("background")

    loop.add_reader(reader.fileno(), on_readable)
    try:
        relay = asyncio.create_task(pump())
        await asyncio.sleep(0)  # the pump is waiting
        writer.send(b"chunk")  # readable before the background work yields
        await asyncio.gather(background(), relay)
    finally:
        loop.remove_reader(reader.fileno())
        reader.close()
        writer.close()
    return order


@pytest.mark.both_loops
async def test_background_work_resumes_after_the_ready_read_and_the_relay_it_wakes() -> None:
    assert await _ordering("after_ready_io") == ["read", "relay", "background"]


async def test_a_plain_yield_would_resume_ahead_of_them() -> None:
    # Why the helper exists: on asyncio's loop, after `sleep(0)` the background step goes ahead of the relay
    # the read woke. uvloop (MINICHAT_TEST_EVENT_LOOP=uvloop) happens to order it behind; the helper holds on
    # both (the test above is marked `both_loops`).
    uvloop = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    expected = ["read", "relay", "background"] if uvloop else ["read", "background", "relay"]
    assert await _ordering("sleep0") == expected


async def test_it_resumes_when_nothing_else_is_ready() -> None:
    await asyncio.wait_for(after_ready_io(), 1.0)
