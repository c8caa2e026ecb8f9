"""The provider task of a live turn and the relay that writes its SSE frames (no aiohttp here).

`TurnRun` runs two steps, one task at a time (a waiting task costs its frames: bench/memory.py):
- the *pump* reads the provider stream, forwards text deltas and tool events at once (nothing is held back
  except citations, which the grammar puts right before the terminal event), records progress for the
  orphan watchdog at most every `progress_update_interval_seconds`, counts finished tool calls on the turn,
  and stops the provider when a tool exceeds its per-message limit;
- the *finisher*, started when the pump task is done, turns how it ended into a `TurnOutcome`, calls the
  finalizer (one transaction, committed before anything terminal is sent) and sends the terminal frame.
The finisher is never cancelled by the client going away: `detach()` only cancels the pump (which aborts
the upstream request) and the finisher finalizes the turn as `cancelled`, keeping the partial text.

`relay(sink)` connects the run to the client's `FrameSink`: `stream_started`, the frames produced before
the relay attached (the pump starts before the response is ready), then every frame is written by the task
that produced it - the pump writes a delta in the same loop step that read it from the provider, with no
queue and no second task to wake (bench/stream.py: per-chunk latency). The deltas of the events one
provider read carries (a busy loop reads several at once) go out in one write, just before the pump would
wait for the next read: none waits for anything that had not arrived with it, and the socket takes one
system call instead of one per frame. The frames follow the grammar
`stream_started ping* (delta|tool)* citations? (done|error)` by construction: `ping` frames come from a timer
only until the first delta/tool, and a run that ends without a terminal frame (a CAS loser, a finalizer
that could not reach the database) ends with `error{stream_interrupted}`. A sink that reports the client
gone detaches the run. After `detach()` nothing more is written and the relay returns at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

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
from minichat_host.scheduling import after_ready_io, start_eagerly

log = logging.getLogger("minichat.turns")

T = TypeVar("T")

CancelReason = Literal["disconnect", "shutdown"]
Finalize = Callable[[TurnOutcome], Awaitable[FinalizeResult | None]]
ProgressSink = Callable[[], Awaitable[None]]
ToolDoneSink = Callable[[Literal["web_search", "code_interpreter", "file_search"]], Awaitable[None]]


class FrameSink(Protocol):
    """Where a run's frames go (the HTTP layer's SSE response)."""

    async def write_frame(self, frame: events.SseFrame) -> bool:
        """Write one frame now; False when the client is gone (the run then detaches)."""
        ...

    async def write_frames(self, frames: Sequence[events.SseFrame]) -> bool:
        """Write these frames now, in order, in one write; False when the client is gone."""
        ...


# Deltas held for one write at most (a provider read carrying more flushes every this many): bounds how long
# the first of them waits for the others to be parsed.
HELD_FRAMES_MAX = 16


@dataclass(frozen=True, slots=True)
class StreamLimits:
    ping_interval_seconds: float
    progress_update_interval_seconds: float
    channel_capacity: int
    web_search_max_calls: int
    code_interpreter_max_calls: int


class _ToolLimitExceeded(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class TurnRun:
    """One live generation: the provider pump, its finalization, and the frames for the client."""

    # Slots: one of these lives for every open stream (bench/memory.py).
    __slots__ = (
        "_began",
        "_cancel_reason",
        "_caught_up",
        "_citations",
        "_committed",
        "_detached",
        "_direct",
        "_ended",
        "_finalize",
        "_finished",
        "_finisher",
        "_first_sent",
        "_first_token_at",
        "_held",
        "_limits",
        "_on_progress",
        "_on_tool_done",
        "_pending",
        "_ping_task",
        "_ping_timer",
        "_provider",
        "_pump_task",
        "_relay_done",
        "_request",
        "_sink",
        "_started",
        "_tenant_id",
        "_terminal_sent",
        "_text",
        "_tool_done",
        "_tool_starts",
        "turn_id",
    )

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
        self._detached = False
        # The relay: frames produced before it attached wait in `_pending` (bounded by channel_capacity);
        # once it has caught up (`_direct`) every frame goes straight to the sink.
        self._sink: FrameSink | None = None
        self._pending: list[events.SseFrame] = []
        self._direct = False
        # The pump's frames from events that were ready without waiting, written together (see the module).
        self._held: list[events.SseFrame] = []
        self._caught_up: asyncio.Future[None] | None = None
        self._relay_done: asyncio.Future[bool] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_task: asyncio.Task[None] | None = None
        self._first_sent = False  # a delta or tool frame was produced: no more pings
        self._terminal_sent = False
        self._ended = False  # the finisher has produced its last frame
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
        # Started before its turn was committed: resolved True by `confirm()`, False by `abandon()`.
        self._committed: asyncio.Future[bool] | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    def start(
        self, *, before_commit: bool = False, context: contextvars.Context | None = None
    ) -> asyncio.Future[FinalizeResult | None]:
        """Start the pump; the returned future is done when the turn is finalized.

        `before_commit`: the turn's transaction is still open. The upstream request leaves now, but the
        run records nothing, relays nothing and finalizes nothing until `confirm()`; after `abandon()` it
        ends without a trace. `context`: the pump's and the finisher's (not the open transaction's).
        """
        if self._finished is None:
            loop = asyncio.get_running_loop()
            self._finished = loop.create_future()
            if before_commit:
                self._committed = loop.create_future()
            self._pump_task = start_eagerly(
                loop, self._pump(), name=f"turn-pump-{self.turn_id}", context=context
            )
            self._pump_task.add_done_callback(self._start_finisher, context=context)
        return self._finished

    def confirm(self) -> None:
        """The turn's transaction committed: the run goes on as if started after it."""
        _resolve(self._committed, True)
        self._committed = None

    def abandon(self) -> None:
        """The turn's transaction failed: abort the upstream request; there is no turn to finalize."""
        _resolve(self._committed, False)
        self.detach("shutdown")

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

        Nothing more is written, and a relay waiting for the end returns False at once.
        """
        self._detached = True
        if self._pump_task is not None and not self._pump_task.done():
            self._cancel_reason = reason
            self._pump_task.cancel()
        self._pending.clear()
        self._held.clear()
        self._stop_pings()
        _resolve(self._caught_up, None)
        _resolve(self._relay_done, False)

    # --- relay ----------------------------------------------------------------------------------
    async def relay(self, sink: FrameSink) -> bool:
        """Write this run's frames to `sink` until the terminal one: True when it was written, False when
        the client went away or the run was detached first."""
        if self._relay_done is not None:
            raise RuntimeError("a run is relayed once")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._relay_done = done
        self._sink = sink
        # `stream_started` and what was produced before the relay attached (a short answer: all of it) in
        # one write, then whatever the producer added meanwhile.
        frames = [self._started, *self._pending]
        self._pending.clear()
        if self._detached or not await self._deliver_frames(frames):
            return False
        if not self._first_sent:
            self._arm_ping()
        while self._pending and not self._detached and not self._terminal_sent:
            frames = self._pending[:]
            self._pending.clear()
            if not await self._deliver_frames(frames):
                break
        if self._terminal_sent:
            return True
        if self._detached:
            return False
        self._direct = True
        _resolve(self._caught_up, None)
        if self._ended and not self._terminal_sent:
            await self._interrupted()
        return await done

    async def _deliver(self, frame: events.SseFrame) -> bool:
        """Write one frame; a client gone detaches the run. Only the relay's sink is written to."""
        sink = self._sink
        assert sink is not None
        if self._detached or self._terminal_sent:
            return False
        if not await sink.write_frame(frame):
            self.detach()
            return False
        if frame.is_terminal:
            self._terminal_written()
        return True

    async def _deliver_frames(self, frames: list[events.SseFrame]) -> bool:
        """`_deliver` for several frames, in one write."""
        if len(frames) == 1:
            return await self._deliver(frames[0])
        sink = self._sink
        assert sink is not None
        if self._detached or self._terminal_sent:
            return False
        if not await sink.write_frames(frames):
            self.detach()
            return False
        if frames[-1].is_terminal:
            self._terminal_written()
        return True

    def _terminal_written(self) -> None:
        self._terminal_sent = True
        self._stop_pings()
        _resolve(self._relay_done, True)

    async def _deliver_held(self) -> None:
        """Write the frames the pump held back, in one write."""
        held = self._held
        if held:
            self._held = []
            # Usually the one delta of the read: straight to `_deliver` (this runs once per token).
            await (self._deliver(held[0]) if len(held) == 1 else self._deliver_frames(held))

    async def _interrupted(self) -> None:
        await self._deliver(events.error("stream_interrupted", "The stream ended before the turn finished."))

    def _arm_ping(self) -> None:
        self._ping_timer = asyncio.get_running_loop().call_later(
            self._limits.ping_interval_seconds, self._ping_due
        )

    def _stop_pings(self) -> None:
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    def _ping_due(self) -> None:
        self._ping_timer = None
        if self._first_sent or self._detached or self._terminal_sent:
            return
        # A timer cannot await the write: a short task does (only while the model has said nothing yet).
        # It is created only once the relay is writing directly, so the ping follows `stream_started`.
        self._ping_task = asyncio.get_running_loop().create_task(self._send_ping())
        self._arm_ping()

    async def _send_ping(self) -> None:
        # Checked again here: a delta produced since the timer fired goes first and ends the pings.
        try:
            if not self._first_sent and self._direct:
                await self._deliver(events.PING)
        finally:
            self._ping_task = None  # a finished task kept for the whole stream costs memory

    # --- internals ------------------------------------------------------------------------------
    async def _emit(self, frame: events.SseFrame, *, hold: bool = False) -> None:
        """Send `frame` to the client now, or keep it until the relay has caught up.

        `hold` (the pump's deltas): once the relay writes directly, the frame waits until the pump is about
        to wait for the provider (`_pump`) and goes out in one write with the others of the same read.
        """
        if self._detached or self._terminal_sent:
            return
        if frame.event in ("delta", "tool"):
            self._first_sent = True
        if self._direct:
            if hold:
                self._held.append(frame)
                if len(self._held) >= HELD_FRAMES_MAX:
                    await self._deliver_held()
                return
            if self._held:
                await self._deliver_held()
            await self._deliver(frame)
            return
        self._pending.append(frame)
        while len(self._pending) >= self._limits.channel_capacity and not self._direct and not self._detached:
            self._caught_up = asyncio.get_running_loop().create_future()
            try:
                await self._caught_up
            finally:
                self._caught_up = None

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
        provider_events = stream.__aiter__()
        try:
            while True:
                # The provider's next event, its `__anext__` stepped by hand to tell an event that is ready
                # at once (the same read's) from one that is not: before waiting for the latter, the held
                # frames are written. Each time it suspends on a future, this coroutine awaits that future
                # in its place and then resumes it (with what the wait raised, if anything: a cancellation
                # reaches the provider where it waits). Inline: this runs once per token.
                step = provider_events.__anext__().__await__()
                thrown: BaseException | None = None
                try:
                    while True:
                        try:
                            waiting_on = step.send(None) if thrown is None else step.throw(thrown)
                        except StopIteration as ready:
                            event = ready.value
                            break
                        thrown = None
                        try:
                            if self._held:
                                await self._deliver_held()
                            if waiting_on is None:
                                await asyncio.sleep(0)  # a bare yield: the provider gives the loop a turn
                            else:
                                # What a task does with the future a coroutine yields (the flag means "an
                                # await, not a bare yield"); the provider's own await of it then resumes.
                                waiting_on._asyncio_future_blocking = False
                                await waiting_on
                        except BaseException as exc:
                            thrown = exc
                except StopAsyncIteration:
                    break
                if self._committed is not None and not await asyncio.shield(self._committed):
                    # Abandoned. Nothing is relayed or recorded for a turn before its commit (`confirm()`
                    # clears the future; shielded: a cancelled pump must not cancel the finisher's wait).
                    raise asyncio.CancelledError
                if isinstance(event, TextDelta):
                    if not event.text:
                        continue
                    if self._first_token_at is None:
                        self._first_token_at = time.monotonic()
                    self._text.append(event.text)
                    frame = events.delta(event.text)
                    if self._direct and not (self._detached or self._terminal_sent):
                        # `_emit(frame, hold=True)` inline, without a coroutine per token.
                        self._first_sent = True
                        self._held.append(frame)
                        if len(self._held) >= HELD_FRAMES_MAX:
                            await self._deliver_held()
                    else:
                        await self._emit(frame, hold=True)
                    if self._detached:
                        # The write found the client gone: detach() cancelled this task, which takes
                        # effect at its next suspension; stop reading the provider now.
                        raise asyncio.CancelledError
                elif isinstance(event, ToolEvent):
                    await self._deliver_held()
                    await self._on_tool(event)
                elif isinstance(event, Citations):
                    self._citations.extend(event.items)
                elif isinstance(event, Completed):
                    completed = event
                    break
                if time.monotonic() - last_progress >= progress_every:
                    last_progress = time.monotonic()
                    await self._deliver_held()
                    await self._on_progress()
        finally:
            try:
                # Before the terminal frame (the finisher's): the deltas of the provider's last read.
                await self._deliver_held()
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
        committed = self._committed
        if committed is not None and not await committed:
            # Abandoned: the turn's transaction rolled back, so there is no turn to finalize.
            if not pump.cancelled():
                pump.exception()  # retrieved: what the provider said no longer matters
            self._ended = True
            return None
        outcome = self._outcome_of(pump)
        await after_ready_io()
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
        self._ended = True
        if self._direct and not self._terminal_sent and not self._detached:
            await self._interrupted()
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


def _resolve(future: asyncio.Future[T] | None, value: T) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _client_message(exc: ProviderError) -> str:
    # Provider messages may carry upstream identifiers; send the code's generic text instead.
    return error_message(exc.code)
