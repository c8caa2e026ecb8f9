"""`TurnRun.relay`: the frame grammar whatever the relay's timing relative to the run.

The HTTP suites (tests/turns) cover the relay end to end; these pin the orderings that are hard to force
through a socket: a run that is finished before the relay attaches, one that fills the pre-attach buffer,
a run that ends without a terminal frame, a sink that reports the client gone, pings before the first token.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

from minichat_host.domain import events
from minichat_host.domain.finalize import FinalizeResult, TurnOutcome
from minichat_host.domain.streaming import HELD_FRAMES_MAX, StreamLimits, TurnRun
from minichat_host.plugins.types import Usage
from minichat_host.providers.base import Completed, ProviderError, ProviderRequest, StreamEvent, TextDelta


class ScriptedProvider:
    """Yields the scripted events, waiting on `gate` (when given) before each one; `suspend_each`: with a
    real suspension before each (as if every event were its own provider read)."""

    def __init__(
        self, script: list[StreamEvent], gate: asyncio.Event | None = None, *, suspend_each: bool = False
    ) -> None:
        self._script = script
        self._gate = gate
        self._suspend_each = suspend_each
        self.closed = False

    async def stream(self, request: ProviderRequest, *, tenant_id: str) -> AsyncIterator[StreamEvent]:
        try:
            for event in self._script:
                if self._gate is not None:
                    await self._gate.wait()
                if self._suspend_each:
                    await asyncio.sleep(0)
                yield event
        finally:
            self.closed = True


class ListSink:
    """Records the frames, and each write's frames (`writes`); `fail_after` frames it reports the client
    gone (a write is whole or not at all, as on a socket)."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.frames: list[events.SseFrame] = []
        self.writes: list[list[str]] = []
        self._fail_after = fail_after

    async def write_frame(self, frame: events.SseFrame) -> bool:
        return await self.write_frames([frame])

    async def write_frames(self, frames: Sequence[events.SseFrame]) -> bool:
        if self._fail_after is not None and len(self.frames) >= self._fail_after:
            return False
        self.frames.extend(frames)
        self.writes.append([frame.event for frame in frames])
        return True

    @property
    def names(self) -> list[str]:
        return [frame.event for frame in self.frames]


def _run(
    provider: ScriptedProvider,
    *,
    terminal: bool = True,
    capacity: int = 16,
    ping_interval: float = 30.0,
) -> tuple[TurnRun, list[TurnOutcome]]:
    outcomes: list[TurnOutcome] = []

    async def finalize(outcome: TurnOutcome) -> FinalizeResult:
        outcomes.append(outcome)
        frame = events.error("provider_error", "failed") if outcome.state == "failed" else None
        if outcome.state == "completed":
            frame = events.done(
                input_tokens=1,
                output_tokens=2,
                effective_model="m",
                selected_model="m",
                quota_decision="allow",
                downgrade_from=None,
                downgrade_reason=None,
                quota_warnings=None,
            )
        return FinalizeResult(won=terminal, outcome=outcome, terminal=frame)

    async def nothing() -> None:
        return None

    async def tool_done(name: str) -> None:
        return None

    run = TurnRun(
        turn_id=uuid.uuid4(),
        started=events.stream_started(uuid.uuid4(), uuid.uuid4(), is_new_turn=True),
        provider=provider,  # type: ignore[arg-type]  # streams only
        request=ProviderRequest(model="m", input=[]),
        tenant_id="t",
        finalize=finalize,
        on_progress=nothing,
        on_tool_done=tool_done,  # type: ignore[arg-type]
        limits=StreamLimits(
            ping_interval_seconds=ping_interval,
            progress_update_interval_seconds=30.0,
            channel_capacity=capacity,
            web_search_max_calls=3,
            code_interpreter_max_calls=3,
        ),
    )
    return run, outcomes


def _script(words: int) -> list[StreamEvent]:
    script: list[StreamEvent] = [TextDelta(text=f"w{i} ") for i in range(words)]
    script.append(Completed(usage=Usage(input_tokens=1, output_tokens=words)))
    return script


async def test_a_run_finished_before_the_relay_attaches_is_relayed_whole() -> None:
    run, outcomes = _run(ScriptedProvider(_script(3)))
    await run.start()
    sink = ListSink()
    assert await run.relay(sink) is True
    assert sink.names == ["stream_started", "delta", "delta", "delta", "done"]
    assert len(sink.writes) == 1  # a short answer done before the relay attached goes out in one write
    assert outcomes[0].state == "completed" and outcomes[0].text == "w0 w1 w2 "


async def test_a_full_pre_attach_buffer_holds_the_pump_until_the_relay_catches_up() -> None:
    run, _ = _run(ScriptedProvider(_script(40)), capacity=16)
    finished = run.start()
    await asyncio.sleep(0.05)
    assert not finished.done()  # 16 frames buffered, the pump waits for the relay
    sink = ListSink()
    assert await run.relay(sink) is True
    await finished
    assert sink.names == ["stream_started", *["delta"] * 40, "done"]
    assert "".join(f.data.content for f in sink.frames if isinstance(f.data, events.SseDelta)) == "".join(
        f"w{i} " for i in range(40)
    )


async def test_frames_go_straight_to_the_sink_once_attached() -> None:
    gate = asyncio.Event()
    run, _ = _run(ScriptedProvider(_script(2), gate))
    finished = run.start()
    sink = ListSink()
    relay = asyncio.create_task(run.relay(sink))
    await asyncio.sleep(0.01)
    assert sink.names == ["stream_started"]
    gate.set()
    assert await relay is True
    await finished
    assert sink.names == ["stream_started", "delta", "delta", "done"]


async def test_a_run_ending_without_a_terminal_frame_ends_the_stream_interrupted() -> None:
    for attach_first in (True, False):
        run, _ = _run(ScriptedProvider(_script(1)), terminal=False)
        sink = ListSink()
        if attach_first:
            relay = asyncio.create_task(run.relay(sink))
            await run.start()
            assert await relay is True
        else:
            await run.start()
            assert await run.relay(sink) is True
        assert sink.names == ["stream_started", "delta", "error"], attach_first
        assert sink.frames[-1].data.code == "stream_interrupted"  # type: ignore[union-attr]


async def test_a_sink_reporting_the_client_gone_cancels_the_run() -> None:
    gate = asyncio.Event()
    gate.set()
    script: list[StreamEvent] = [TextDelta(text="x")] * 1000
    run, outcomes = _run(ScriptedProvider(script, gate, suspend_each=True))
    finished = run.start()
    sink = ListSink(fail_after=3)
    assert await run.relay(sink) is False
    await finished
    assert sink.names == ["stream_started", "delta", "delta"]
    assert outcomes[0].state == "cancelled"


async def test_pings_flow_only_until_the_first_token() -> None:
    gate = asyncio.Event()
    run, _ = _run(ScriptedProvider(_script(1), gate), ping_interval=0.05)
    finished = run.start()
    sink = ListSink()
    relay = asyncio.create_task(run.relay(sink))
    await asyncio.sleep(0.18)
    gate.set()
    assert await relay is True
    await finished
    names = sink.names
    assert names[0] == "stream_started" and names.count("ping") >= 2
    assert "ping" not in names[names.index("delta") :]
    assert names[-1] == "done"


async def test_detach_returns_the_relay_at_once() -> None:
    gate = asyncio.Event()
    run, outcomes = _run(ScriptedProvider(_script(1), gate))
    finished = run.start()
    sink = ListSink()
    relay = asyncio.create_task(run.relay(sink))
    await asyncio.sleep(0.01)
    run.detach()
    assert await relay is False
    await finished
    assert sink.names == ["stream_started"]
    assert outcomes[0].state == "cancelled"


async def test_deltas_ready_together_go_out_in_one_write() -> None:
    gate = asyncio.Event()
    words = HELD_FRAMES_MAX * 2 + 3
    run, outcomes = _run(ScriptedProvider(_script(words), gate))
    finished = run.start()
    sink = ListSink()
    relay = asyncio.create_task(run.relay(sink))
    await asyncio.sleep(0.01)
    gate.set()  # every event is ready at once, like a read carrying all of them
    assert await relay is True
    await finished
    assert sink.writes == [
        ["stream_started"],
        ["delta"] * HELD_FRAMES_MAX,
        ["delta"] * HELD_FRAMES_MAX,
        ["delta"] * 3,
        ["done"],
    ]
    assert outcomes[0].text == "".join(f"w{i} " for i in range(words))


async def test_a_delta_is_written_before_the_pump_waits_for_the_provider() -> None:
    released = asyncio.Event()

    class OneThenWait:
        async def stream(self, request: ProviderRequest, *, tenant_id: str) -> AsyncIterator[StreamEvent]:
            yield TextDelta(text="a")
            yield TextDelta(text="b")
            await released.wait()
            yield TextDelta(text="c")
            yield Completed(usage=Usage(input_tokens=1, output_tokens=3))

    run, _ = _run(ScriptedProvider([]))
    run._provider = OneThenWait()  # type: ignore[assignment]
    sink = ListSink()
    relay = asyncio.create_task(run.relay(sink))
    await asyncio.sleep(0)
    finished = run.start()
    await asyncio.sleep(0.01)
    # "a" and "b" came together and went out together while the provider is still waiting.
    assert sink.writes == [["stream_started"], ["delta", "delta"]]
    released.set()
    assert await relay is True
    await finished
    assert sink.writes == [["stream_started"], ["delta", "delta"], ["delta"], ["done"]]


async def test_events_apart_are_written_apart() -> None:
    gate = asyncio.Event()
    run, _ = _run(ScriptedProvider(_script(3), gate, suspend_each=True))
    finished = run.start()
    sink = ListSink()
    relay = asyncio.create_task(run.relay(sink))
    await asyncio.sleep(0.01)
    gate.set()
    assert await relay is True
    await finished
    assert sink.writes == [["stream_started"], ["delta"], ["delta"], ["delta"], ["done"]]


async def test_a_client_gone_while_held_deltas_are_written_cancels_the_provider_where_it_waits() -> None:
    writing = asyncio.Event()
    never = asyncio.Event()

    class StallingSink(ListSink):
        async def write_frames(self, frames: Sequence[events.SseFrame]) -> bool:
            if frames[0].event == "delta":
                writing.set()
                await never.wait()  # a client that stopped reading
            return await super().write_frames(frames)

    released = asyncio.Event()

    class TwoThenWait:
        closed = False

        async def stream(self, request: ProviderRequest, *, tenant_id: str) -> AsyncIterator[StreamEvent]:
            try:
                yield TextDelta(text="a")
                yield TextDelta(text="b")
                await released.wait()
                yield TextDelta(text="c")
            finally:
                TwoThenWait.closed = True

    run, outcomes = _run(ScriptedProvider([]))
    run._provider = TwoThenWait()  # type: ignore[assignment]
    sink = StallingSink()
    relay = asyncio.create_task(run.relay(sink))
    await asyncio.sleep(0)
    finished = run.start()
    await asyncio.wait_for(writing.wait(), 1)
    run.detach()
    assert await relay is False
    await asyncio.wait_for(finished, 1)
    assert TwoThenWait.closed
    assert outcomes[0].state == "cancelled" and outcomes[0].text == "ab"
    assert sink.names == ["stream_started"]


async def test_a_run_started_before_its_commit_takes_nothing_from_the_provider_until_confirmed() -> None:
    provider = ScriptedProvider(_script(3))
    run, outcomes = _run(provider)
    finished = run.start(before_commit=True)
    await asyncio.sleep(0.05)
    # The provider's events are there, but none is taken (no frame, no progress) and nothing is finalized.
    assert not finished.done() and outcomes == [] and not provider.closed
    run.confirm()
    await finished
    sink = ListSink()
    assert await run.relay(sink) is True
    assert sink.names == ["stream_started", "delta", "delta", "delta", "done"]
    assert outcomes[0].state == "completed" and provider.closed


async def test_a_run_whose_provider_failed_before_the_commit_is_finalized_after_it() -> None:
    class Refusing(ScriptedProvider):
        async def stream(self, request: ProviderRequest, *, tenant_id: str) -> AsyncIterator[StreamEvent]:
            raise ProviderError("provider_error", "refused")
            yield  # an async generator

    run, outcomes = _run(Refusing([]))
    finished = run.start(before_commit=True)
    await asyncio.sleep(0.05)
    assert not finished.done() and outcomes == []  # the pump is over; its finalization waits
    run.confirm()
    await finished
    assert [o.state for o in outcomes] == ["failed"]


async def test_an_abandoned_run_aborts_the_provider_and_finalizes_nothing() -> None:
    gate = asyncio.Event()
    provider = ScriptedProvider(_script(3), gate)
    run, outcomes = _run(provider)
    finished = run.start(before_commit=True)
    await asyncio.sleep(0.01)
    run.abandon()
    assert await finished is None
    assert outcomes == [] and provider.closed
