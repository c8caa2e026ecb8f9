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
import contextvars
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


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


def start_eagerly(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, T],
    *,
    name: str | None = None,
    context: contextvars.Context | None = None,
) -> asyncio.Task[T]:
    """A task whose first step runs now, in the caller's loop step (Python 3.12+), not one loop turn later.

    A relay's pump sends the upstream request in its first step, and an accepted connection's transport
    starts reading in its: one loop turn on a loop relaying thousands of chunks a second was ~1-2 ms of
    added time to first token at concurrency 10.
    """
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True, context=context)  # type: ignore[call-arg]
    return loop.create_task(coro, name=name, context=context)
