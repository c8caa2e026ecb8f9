"""Plugin hooks that hang, raise or answer garbage, with the outbox scheduler running as in production.

Outbox hooks (SPEC §7-8): a hang is cut at the queue's timeout and retried, an unexpected exception or a
TransientError is retried with backoff, a PermanentError dead-letters the message (listed and replayed
through the admin API) while the partition moves on, and a sink hook's return value is ignored. Through all
of it chats keep streaming and the other queue keeps delivering; once the hook behaves, every turn's audit
event arrives exactly once. Model-policy hooks feed requests directly: a policy that hangs, raises or
answers garbage turns sends into 503 `service_unavailable` with nothing written, while the routes that do
not need the policy keep working, and the next send after it recovers streams normally.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from turns.conftest import PREFIX, Harness
from turns.recorder import Recorder

from minichat_host import constants, hookimpl
from minichat_host.app import PLUGINS_KEY
from minichat_host.plugins.errors import PermanentError, TransientError
from minichat_host.plugins.types import Capability, TurnAuditEvent
from minichat_host.testing import register_plugin

AUDIT_TIMEOUT = 0.3
OUTBOX = {
    "enabled": True,
    "poll_interval_seconds": 0.1,
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 0.3,
    "lease_seconds": 3,
    "lease_headroom_seconds": 1,
    "queues": {constants.QUEUE_AUDIT: {"timeout_seconds": AUDIT_TIMEOUT}},
}


class FaultyAudit:
    """An audit plugin (vendor `minichat`, priority -1: it wins over the Recorder) whose turn hook does
    what `mode` says; it records an event only when the hook succeeded."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls = 0
        self.refuse: set[str] = set()  # request ids whose event is answered with PermanentError
        self.events: list[TurnAuditEvent] = []

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability="audit", vendor="minichat", priority=-1)]

    @hookimpl
    async def minichat_emit_turn_audit(self, event: TurnAuditEvent) -> Any:
        self.calls += 1
        if event.request_id in self.refuse:
            raise PermanentError(f"audit store refuses request {event.request_id}")
        if self.mode == "hang":
            await asyncio.Event().wait()  # until the queue timeout cancels it
        if self.mode == "crash":
            raise ZeroDivisionError("a bug in the plugin")
        if self.mode == "transient":
            raise TransientError("audit store busy")
        self.events.append(event)
        if self.mode == "garbage":
            return {"unexpected": object()}  # a sink's answer means nothing
        return None

    def by_turn(self) -> collections.Counter[str]:
        return collections.Counter(event.turn_id for event in self.events)


async def eventually(predicate: Callable[[], Any], what: str, within: float = 20.0) -> None:
    """Wait until `predicate()` (sync, or a coroutine) is true; events arrive through the outbox."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, f"{what} not reached"
        await asyncio.sleep(0.05)


async def audit_status(harness: Harness) -> tuple[int, int, str]:
    """(backlog, attempts of the head message, last error) summed over the audit queue's partitions."""
    response = await harness.client.get(f"{PREFIX}/admin/outbox/status")
    assert response.status == 200, await response.text()
    rows = [row for row in (await response.json())["items"] if row["queue"] == constants.QUEUE_AUDIT]
    return (
        sum(row["backlog"] for row in rows),
        max(row["attempts"] for row in rows),
        " ".join(row["last_error"] or "" for row in rows),
    )


async def send_turns(harness: Harness, count: int, request_id: str | None = None) -> list[str]:
    """`count` streamed turns in their own chats (local model); all must finish with `done`."""
    request_ids = []
    for _ in range(count):
        chat_id = await harness.create_chat("local-standard")
        this_request = request_id or str(uuid.uuid4())
        streamed = await harness.stream(chat_id, {"content": "hi", "request_id": this_request})
        assert streamed.terminal.event == "done", streamed.frames
        request_ids.append(this_request)
    return request_ids


@pytest.mark.parametrize("mode", ["hang", "crash", "transient"])
async def test_a_failing_audit_hook_is_retried_and_nothing_else_waits(
    make_app: Callable[..., Any], mode: str
) -> None:
    recorder = Recorder()
    harness: Harness = await make_app(recorder, outbox=OUTBOX)
    faulty = FaultyAudit(mode)
    with register_plugin(harness.app[PLUGINS_KEY], faulty, name="faulty-audit"):
        await send_turns(harness, 3)

        async def retried() -> bool:
            backlog, attempts, error = await audit_status(harness)
            return backlog == 3 and attempts >= 2 and bool(error)

        await eventually(retried, "the audit queue retrying its head message")
        _, _, error = await audit_status(harness)
        expected = {"hang": "timed out", "crash": "ZeroDivisionError", "transient": "audit store busy"}[mode]
        assert expected in error, error
        # Usage has its own queue: it is delivered while audit is stuck.
        await recorder.wait_for(lambda: len(recorder.usage) == 3)
        # So is everything a client does.
        await send_turns(harness, 1)
        assert (await harness.client.get(f"{PREFIX}/chats")).status == 200

        faulty.mode = "ok"

        async def drained() -> bool:
            return len(faulty.events) == 4 and (await audit_status(harness))[0] == 0

        await eventually(drained, "the audit backlog delivered once the hook works")
    assert set(faulty.by_turn().values()) == {1}, faulty.by_turn()
    assert faulty.calls > len(faulty.events), "the failed attempts were real calls"
    assert len(recorder.usage_by_key()) == 4 and set(recorder.usage_by_key().values()) == {1}
    response = await harness.client.get(f"{PREFIX}/admin/outbox/dead-letters")
    assert (await response.json())["items"] == []


async def test_a_permanent_refusal_dead_letters_one_event_and_replay_delivers_it(
    make_app: Callable[..., Any],
) -> None:
    recorder = Recorder()
    harness: Harness = await make_app(recorder, outbox=OUTBOX)
    faulty = FaultyAudit("ok")
    refused, *accepted = (str(uuid.uuid4()) for _ in range(3))
    faulty.refuse.add(refused)
    with register_plugin(harness.app[PLUGINS_KEY], faulty, name="faulty-audit"):
        # One tenant: all three events share an audit partition, in this order.
        for request_id in (accepted[0], refused, accepted[1]):
            await send_turns(harness, 1, request_id=request_id)
        await eventually(lambda: len(faulty.events) == 2, "the events around the refused one")
        assert [event.request_id for event in faulty.events] == accepted

        response = await harness.client.get(
            f"{PREFIX}/admin/outbox/dead-letters", params={"queue": constants.QUEUE_AUDIT}
        )
        (letter,) = (await response.json())["items"]
        assert letter["payload_json"]["event"]["request_id"] == refused
        assert "refuses" in letter["last_error"] and letter["attempts"] >= 1

        # The store accepts it now: replay puts it back on its partition and it is delivered once.
        faulty.refuse.clear()
        replay = await harness.client.post(f"{PREFIX}/admin/outbox/dead-letters/{letter['id']}/replay")
        assert replay.status == 200, await replay.text()
        await eventually(lambda: len(faulty.events) == 3, "the replayed event")
        assert faulty.events[-1].request_id == refused

        # A sink hook that answers garbage is still a success: acknowledged, not retried, not rejected.
        faulty.mode = "garbage"
        await send_turns(harness, 1)
        await eventually(lambda: len(faulty.events) == 4, "the event answered with garbage")
        await eventually(lambda: backlog_is_empty(harness), "an empty audit backlog")
    assert set(faulty.by_turn().values()) == {1}
    pending = await harness.client.get(f"{PREFIX}/admin/outbox/dead-letters")
    assert (await pending.json())["items"] == []


class FlakyPolicy(Recorder):
    """The Recorder's policy, broken on demand: `mode` "hang", "crash" or "garbage" (else it works)."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"

    async def _misbehave(self) -> Any:
        if self.mode == "hang":
            await asyncio.Event().wait()
        if self.mode == "crash":
            raise RuntimeError("policy service down")
        if self.mode == "garbage":
            return {"model_catalog": "not a list", "policy_version": "seven"}
        return None

    @hookimpl
    async def minichat_get_current_policy_version(self) -> Any:
        return await self._misbehave() or self.current

    @hookimpl
    async def minichat_get_policy_snapshot(self, user_id: str, policy_version: int) -> Any:
        garbage = await self._misbehave()
        return garbage or await super().minichat_get_policy_snapshot(user_id, policy_version)


@pytest.mark.parametrize("mode", ["hang", "crash", "garbage"])
async def test_a_failing_policy_plugin_refuses_sends_cleanly_and_recovers(
    make_app: Callable[..., Any], mode: str
) -> None:
    policy = FlakyPolicy()
    harness: Harness = await make_app(policy, plugins={"hook_timeout_seconds": 0.3})
    chat_id = await harness.create_chat("local-standard")
    first = await harness.stream(chat_id, {"content": "before"})
    assert first.terminal.event == "done"
    (assistant_id,) = [m["id"] for m in await _messages(harness, chat_id) if m["role"] == "assistant"]
    before = await harness.counts()

    policy.mode = mode
    refused = await harness.stream(chat_id, {"content": "during"})
    assert refused.status == 503 and refused.frames == [], refused
    assert refused.problem is not None and refused.problem["code"] == "service_unavailable"
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert await harness.counts() == before, "a refused send writes nothing"
    # What does not need the policy keeps working.
    assert (await harness.client.get(f"{PREFIX}/chats/{chat_id}")).status == 200
    assert len(await _messages(harness, chat_id)) == 2
    reaction = await harness.client.put(
        f"{PREFIX}/chats/{chat_id}/messages/{assistant_id}/reaction", json={"reaction": "like"}
    )
    assert reaction.status == 200

    policy.mode = "ok"
    after = await harness.stream(chat_id, {"content": "after"})
    assert after.terminal.event == "done", after.frames
    assert await harness.reserved() == 0


async def _messages(harness: Harness, chat_id: str) -> list[dict[str, Any]]:
    response = await harness.client.get(f"{PREFIX}/chats/{chat_id}/messages")
    assert response.status == 200
    items: list[dict[str, Any]] = (await response.json())["items"]
    return items


async def backlog_is_empty(harness: Harness) -> bool:
    return (await audit_status(harness))[0] == 0
