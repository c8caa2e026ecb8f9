"""Background work that gives way to the request path on the one event loop.

The relay writes a chunk in the loop step that its socket read wakes, and a turn start runs from the
request's read to the upstream POST in one step (SQLite statements run on the loop's thread). Work nobody
waits on (the outbox's batches and sequencing, a turn's finalization once its last chunk is out) is
started with `after_ready_io()` so that it goes after the reads that are ready by then instead of ahead of
them: at concurrency 10 the streams' ends come together, and each step of that work in front of a read
was a millisecond added to a chunk or a first token (bench/stream.py).
"""

from __future__ import annotations

import asyncio


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def after_ready_io() -> None:
    """Resume after the socket callbacks that are ready at the loop's next poll, and what they wake.

    `asyncio.sleep(0)` would resume ahead of them: its wake-up is in the loop's ready queue before the poll
    appends the sockets' callbacks. A timer due now is moved to the ready queue only after the poll, behind
    those callbacks; its wake-up then runs behind the tasks they woke (a relay's pump).
    """
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    loop.call_later(0, _wake, waiter)
    await waiter
