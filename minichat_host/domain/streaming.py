"""The provider task of a live turn and the relay that turns it into SSE frames (no aiohttp here).

`TurnRun` runs two steps, one task at a time (a waiting task costs its frames: bench/memory.py):
- the *pump* reads the provider stream, forwards text deltas and tool events at once (nothing is held back
  except citations, which the grammar puts right before the terminal event), records progress for the
  orphan watchdog at most every `progress_update_interval_seconds`, counts finished tool calls on the turn,
  and stops the provider when a tool exceeds its per-message limit;
- the *finisher*, started when the pump task is done, turns how it ended into a `TurnOutcome`, calls the
  finalizer (one transaction, committed before anything terminal is sent) and queues the terminal frame.
The finisher is never cancelled by the client going away: `detach()` only cancels the pump (which aborts
the upstream request) and the finisher finalizes the turn as `cancelled`, keeping the partial text.

`frames()` is the relay: `stream_started`, then `ping` frames while nothing has arrived yet (only before
the first delta/tool), then the queued frames in grammar order `(delta|tool)* citations? (done|error)`;
anything out of order is dropped, and a run that ends without a terminal frame (a CAS loser, a finalizer
that could not reach the database) ends with `error{stream_interrupted}`. After `detach()` the relay ends
at once, without a terminal frame (nobody is listening).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal

from minichat_host.domain import events
from minichat_host.domain.finalize import FinalizeResult, TurnOutcome, error_message
from minichat_host.providers.base import (
    Citation,
    Citations,
    Completed,
    LlmProvider,
    ProviderError,
    ProviderRequest,
    TextDelta,
    ToolEvent,
    Usage,
)

log = logging.getLogger("minichat.turns")

CancelReason = Literal["disconnect", "shutdown"]
Finalize = Callable[[TurnOutcome], Awaitable[FinalizeResult | None]]
ProgressSink = Callable[[], Awaitable[None]]
ToolDoneSink = Callable[[Literal["web_search", "code_interpreter", "file_search"]], Awaitable[None]]

_END: Final = object()
_DETACHED: Final = object()


@dataclass(frozen=True, slots=True)
class StreamLimits:
    ping_interval_seconds: float
    progress_update_interval_seconds: float
    channel_capacity: int
    web_search_max_calls: int
    code_interpreter_max_calls: int


class _Channel:
    """The bounded FIFO from the pump (and then the finisher) to the relay.

    One producer and one consumer at a time, so one waiter per side: a list and two futures instead of
    asyncio.Queue's three deques (~2.3 KiB per open stream, bench/memory.py).
    """

    __slots__ = ("_capacity", "_getter", "_items", "_putter")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: list[events.SseFrame | object] = []
        self._getter: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None

    async def put(self, item: events.SseFrame | object) -> None:
        while len(self._items) >= self._capacity:
            self._putter = asyncio.get_running_loop().create_future()
            try:
                await self._putter
            finally:
                self._putter = None
        self._items.append(item)
        _wake(self._getter)

    async def get(self) -> events.SseFrame | object:
        while not self._items:
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        item = self._items.pop(0)
        _wake(self._putter)
        return item

    def replace_all(self, item: object) -> None:
        """Drop what is queued and leave only `item` (over capacity if need be); wake both sides."""
        self._items = [item]
        _wake(self._getter)
        _wake(self._putter)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class _ToolLimitExceeded(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class TurnRun:
    """One live generation: the provider pump, its finalization, and the frames for the client."""

    def __init__(
        self,
        *,
        turn_id: uuid.UUID,
        started: events.SseFrame,
        provider: LlmProvider,
        request: ProviderRequest,
        tenant_id: str,
        finalize: Finalize,
        on_progress: ProgressSink,
        on_tool_done: ToolDoneSink,
        limits: StreamLimits,
    ) -> None:
        self.turn_id = turn_id
        self._started = started
        self._provider = provider
        self._request: ProviderRequest | None = request
        self._tenant_id = tenant_id
        self._finalize = finalize
        self._on_progress = on_progress
        self._on_tool_done = on_tool_done
        self._limits = limits
        self._channel = _Channel(limits.channel_capacity)
        self._detached = False
        self._cancel_reason: CancelReason | None = None
        self._pump_task: asyncio.Task[TurnOutcome] | None = None
        self._finisher: asyncio.Task[FinalizeResult | None] | None = None
        self._finished: asyncio.Future[FinalizeResult | None] | None = None
        # What the pump has seen so far (read by the runner when the pump is cancelled).
        self._text: list[str] = []
        self._tool_starts: dict[str, int] = {}
        self._tool_done: dict[str, int] = {}
        self._citations: list[Citation] = []
        self._began = time.monotonic()
        self._first_token_at: float | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> asyncio.Future[FinalizeResult | None]:
        """Start the pump; the returned future is done when the turn is finalized."""
        if self._finished is None:
            loop = asyncio.get_running_loop()
            self._finished = loop.create_future()
            self._pump_task = loop.create_task(self._pump(), name=f"turn-pump-{self.turn_id}")
            self._pump_task.add_done_callback(self._start_finisher)
        return self._finished

    @property
    def finished(self) -> asyncio.Future[FinalizeResult | None]:
        if self._finished is None:
            raise RuntimeError("the run was not started")
        return self._finished

    def _start_finisher(self, pump: asyncio.Task[TurnOutcome]) -> None:
        self._finisher = asyncio.get_running_loop().create_task(
            self._finish(pump), name=f"turn-finish-{self.turn_id}"
        )
        self._finisher.add_done_callback(self._settle)

    def _settle(self, finisher: asyncio.Task[FinalizeResult | None]) -> None:
        finished = self._finished
        assert finished is not None
        if finished.done():
            return
        if finisher.cancelled():
            finished.cancel()
        elif (exc := finisher.exception()) is not None:
            finished.set_exception(exc)
        else:
            finished.set_result(finisher.result())

    def detach(self, reason: CancelReason = "disconnect") -> None:
        """The client is gone (or the server is stopping): abort the provider call; the turn ends cancelled.

        Frames are no longer queued, and the channel is emptied so a finisher blocked on it moves on.
        """
        self._detached = True
        if self._pump_task is not None and not self._pump_task.done():
            self._cancel_reason = reason
            self._pump_task.cancel()
        # Wake a relay blocked on the empty channel; it sees the flag and ends without a terminal frame.
        self._channel.replace_all(_DETACHED)

    # --- relay ----------------------------------------------------------------------------------
    async def frames(self) -> AsyncIterator[events.SseFrame]:
        """The SSE frames of this run in grammar order, ending with exactly one terminal frame."""
        yield self._started
        waiting_first = True
        citations_sent = False
        while True:
            if waiting_first:
                try:
                    # asyncio.timeout, not wait_for: no extra task per waiting stream (Python 3.11).
                    async with asyncio.timeout(self._limits.ping_interval_seconds):
                        item = await self._channel.get()
                except TimeoutError:
                    if self._detached:
                        return
                    yield events.PING
                    continue
            else:
                item = await self._channel.get()
            if self._detached:
                return
            if item is _END:
                yield events.error("stream_interrupted", "The stream ended before the turn finished.")
                return
            assert isinstance(item, events.SseFrame)
            if item.event in ("delta", "tool"):
                if citations_sent:
                    continue  # the grammar puts citations after every delta and tool event
                waiting_first = False
            elif item.event == "citations":
                if citations_sent:
                    continue
                citations_sent = True
            yield item
            if item.is_terminal:
                return

    # --- internals ------------------------------------------------------------------------------
    async def _emit(self, frame: events.SseFrame | object) -> None:
        if not self._detached:
            await self._channel.put(frame)

    async def _pump(self) -> TurnOutcome:
        """Relay the provider stream; returns the completed outcome or raises what ended it."""
        progress_every = self._limits.progress_update_interval_seconds
        last_progress = time.monotonic()
        completed: Completed | None = None
        # The request is the provider's from here on: not kept for the length of the stream.
        request, self._request = self._request, None
        assert request is not None, "a run pumps once"
        stream = self._provider.stream(request, tenant_id=self._tenant_id)
        del request
        try:
            async for event in stream:
                if isinstance(event, TextDelta):
                    if not event.text:
                        continue
                    if self._first_token_at is None:
                        self._first_token_at = time.monotonic()
                    self._text.append(event.text)
                    await self._emit(events.delta(event.text))
                elif isinstance(event, ToolEvent):
                    await self._on_tool(event)
                elif isinstance(event, Citations):
                    self._citations.extend(event.items)
                elif isinstance(event, Completed):
                    completed = event
                    break
                if time.monotonic() - last_progress >= progress_every:
                    last_progress = time.monotonic()
                    await self._on_progress()
        finally:
            # Closing the generator aborts the upstream request (tool limit, cancellation, early end).
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if completed is None:
            raise ProviderError("provider_error", "The provider stream ended without completing.")
        return self._outcome("completed", usage=completed.usage, response_id=completed.response_id)

    async def _on_tool(self, event: ToolEvent) -> None:
        name = event.name
        if event.phase == "start":
            started = self._tool_starts.get(name, 0) + 1
            self._tool_starts[name] = started
            limit = {
                "web_search": self._limits.web_search_max_calls,
                "code_interpreter": self._limits.code_interpreter_max_calls,
            }.get(name)
            if limit is not None and started > limit:
                raise _ToolLimitExceeded(f"{name}_calls_exceeded")
        else:
            self._tool_done[name] = self._tool_done.get(name, 0) + 1
            await self._on_tool_done(name)
        if self._first_token_at is None:
            self._first_token_at = time.monotonic()
        await self._emit(events.tool(event.phase, name, event.details))

    def _outcome(
        self,
        state: Literal["completed", "failed", "cancelled"],
        *,
        error_code: str | None = None,
        error_detail: str | None = None,
        usage: Usage | None = None,
        response_id: str | None = None,
    ) -> TurnOutcome:
        now = time.monotonic()
        features = tuple(sorted(self._tool_done))
        return TurnOutcome(
            state=state,
            error_code=error_code,
            error_detail=error_detail,
            text="".join(self._text),
            usage=usage,
            provider_response_id=response_id,
            file_search_calls=self._tool_done.get("file_search", 0),
            web_search_calls=self._tool_done.get("web_search", 0),
            code_interpreter_calls=self._tool_done.get("code_interpreter", 0),
            features_used=features,
            ttft_ms=int((self._first_token_at - self._began) * 1000) if self._first_token_at else None,
            total_ms=int((now - self._began) * 1000),
        )

    async def _finish(self, pump: asyncio.Task[TurnOutcome]) -> FinalizeResult | None:
        outcome = self._outcome_of(pump)
        result: FinalizeResult | None = None
        try:
            result = await self._finalize(outcome)
        except Exception:
            log.exception("turn %s: finalization failed; the orphan watchdog will settle it", self.turn_id)
            await self._emit(events.error("internal_error", "The turn could not be finalized."))
        else:
            if result is not None and result.won:
                if result.terminal is not None and result.terminal.event == "done" and self._citations:
                    await self._emit(events.citations(self._citations))
                if result.terminal is not None:
                    await self._emit(result.terminal)
        await self._emit(_END)
        return result

    def _outcome_of(self, pump: asyncio.Task[TurnOutcome]) -> TurnOutcome:
        if pump.cancelled():
            return self._outcome("cancelled")
        exc = pump.exception()
        if exc is None:
            return pump.result()
        if isinstance(exc, _ToolLimitExceeded):
            return self._outcome("failed", error_code=exc.code, error_detail=error_message(exc.code))
        if isinstance(exc, ProviderError):
            return self._outcome("failed", error_code=exc.code, error_detail=_client_message(exc))
        log.error("turn %s: provider stream failed", self.turn_id, exc_info=exc)
        return self._outcome(
            "failed", error_code="provider_error", error_detail=error_message("provider_error")
        )


def _client_message(exc: ProviderError) -> str:
    # Provider messages may carry upstream identifiers; send the code's generic text instead.
    return error_message(exc.code)
