"""Queue → hook routing through the real PluginHost (the per-queue mapping of scenario 12 in §7)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import databases
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from minichat_host import constants
from minichat_host.config import Config
from minichat_host.outbox import Outbox, OutboxMetrics, list_dead_letters
from minichat_host.outbox.routing import queue_timing, register_domain_queue, register_plugin_queues
from minichat_host.outbox.tables import outbox_processor
from minichat_host.plugins.errors import PermanentError, PluginTimeout, TransientError
from minichat_host.plugins.hookspecs import hookimpl
from minichat_host.plugins.manager import PluginHost
from minichat_host.plugins.types import (
    AuditEnvelope,
    AuditUsage,
    Capability,
    LatencyMs,
    PolicyDecisions,
    QuotaPolicyDecision,
    TurnAuditEvent,
    TurnDeleteAuditEvent,
    TurnMutationAuditEvent,
    UsageEvent,
)
from minichat_host.testing import make_config

TENANT = "00000000-df51-5b42-9538-d2b56b7ee953"


class PolicyPlugin:
    def __init__(self) -> None:
        self.events: list[UsageEvent] = []
        self.failures: list[BaseException | float] = []

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability="model_policy", vendor="test", priority=1)]

    @hookimpl
    async def minichat_publish_usage(self, event: UsageEvent) -> None:
        failure = self.failures.pop(0) if self.failures else None
        if isinstance(failure, float):
            await asyncio.sleep(failure)
        elif failure is not None:
            raise failure
        self.events.append(event)


class AuditPlugin:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.failures: list[BaseException | float] = []

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability="audit", vendor="test", priority=1)]

    async def _record(self, hook: str, event: Any) -> None:
        failure = self.failures.pop(0) if self.failures else None
        if isinstance(failure, float):
            await asyncio.sleep(failure)
        elif failure is not None:
            raise failure
        self.calls.append((hook, event))

    @hookimpl
    async def minichat_emit_turn_audit(self, event: TurnAuditEvent) -> None:
        await self._record("turn", event)

    @hookimpl
    async def minichat_emit_turn_retry_audit(self, event: TurnMutationAuditEvent) -> None:
        await self._record("retry", event)

    @hookimpl
    async def minichat_emit_turn_edit_audit(self, event: TurnMutationAuditEvent) -> None:
        await self._record("edit", event)

    @hookimpl
    async def minichat_emit_turn_delete_audit(self, event: TurnDeleteAuditEvent) -> None:
        await self._record("delete", event)


def usage_event(request_id: str = "r1") -> UsageEvent:
    return UsageEvent(
        tenant_id=TENANT,
        chat_id="c1",
        request_id=request_id,
        effective_model="m",
        selected_model="m",
        terminal_state="completed",
        billing_outcome="actual",
        actual_credits_micro=42,
        settlement_method="actual",
        policy_version_applied=1,
        timestamp="2026-11-23T00:00:00Z",
        dedupe_key=f"{TENANT}/t/{request_id}",
    )


def turn_event() -> TurnAuditEvent:
    return TurnAuditEvent(
        event_type="turn_completed",
        timestamp="2026-11-23T00:00:00Z",
        tenant_id=TENANT,
        user_id="u1",
        chat_id="c1",
        turn_id="t1",
        request_id="r1",
        selected_model="m",
        effective_model="m",
        usage=AuditUsage(input_tokens=1, output_tokens=2),
        latency_ms=LatencyMs(),
        policy_decisions=PolicyDecisions(quota=QuotaPolicyDecision(decision="allow")),
    )


def mutation_event(kind: str) -> TurnMutationAuditEvent:
    return TurnMutationAuditEvent(
        event_type=kind,  # type: ignore[arg-type]
        timestamp="2026-11-23T00:00:00Z",
        tenant_id=TENANT,
        actor_user_id="u1",
        chat_id="c1",
        turn_id="t1",
        original_request_id="r1",
        new_request_id="r2",
    )


def delete_event() -> TurnDeleteAuditEvent:
    return TurnDeleteAuditEvent(
        event_type="turn_delete",
        timestamp="2026-11-23T00:00:00Z",
        tenant_id=TENANT,
        actor_user_id="u1",
        chat_id="c1",
        turn_id="t1",
        request_id="r1",
    )


def routing_config(tmp_path: Path, audit_vendor: str = "test") -> Config:
    return make_config(
        tmp_path,
        {
            "plugins": {"model_policy_vendor": "test", "audit_vendor": audit_vendor},
            "outbox": {
                "num_partitions": 2,
                "lease_seconds": 3.0,
                "lease_headroom_seconds": 0.5,
                "retry_base_seconds": 30.0,
                "retry_max_seconds": 30.0,
                "queues": {constants.QUEUE_AUDIT: {"timeout_seconds": 0.3}},
            },
        },
    )


class Setup:
    def __init__(self, outbox: Outbox, host: PluginHost, policy: PolicyPlugin, audit: AuditPlugin) -> None:
        self.outbox = outbox
        self.host = host
        self.policy = policy
        self.audit = audit

    async def send(self, queue: str, payload: Any) -> None:
        async with self.outbox.transaction() as tx:
            await tx.enqueue(queue, TENANT, payload)

    async def attempts(self, queue: str) -> list[int]:
        ids = list(self.outbox._ids_by_queue[queue].values())
        rows = await self.outbox.database.fetch_all(
            sa.select(outbox_processor.c.attempts).where(outbox_processor.c.partition_id.in_(ids))
        )
        return sorted(int(row[0]) for row in rows)


async def build(
    database: databases.Database, engine_name: str, config: Config, registry: CollectorRegistry
) -> AsyncIterator[Setup]:
    policy, audit = PolicyPlugin(), AuditPlugin()
    host = PluginHost(config, load_entry_points=False, extra_plugins=[("policy", policy), ("audit", audit)])
    await host.start()
    outbox = Outbox(database, config.outbox, dialect=engine_name, metrics=OutboxMetrics(registry))
    register_plugin_queues(outbox, host, config)
    await outbox.ensure_queues()
    try:
        yield Setup(outbox, host, policy, audit)
    finally:
        await host.aclose()


@pytest.fixture
async def routed(database: databases.Database, engine_name: str, tmp_path: Path) -> AsyncIterator[Setup]:
    async for setup in build(database, engine_name, routing_config(tmp_path), CollectorRegistry()):
        yield setup


def test_queue_timing_keeps_every_timeout_below_its_lease(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert queue_timing(config, constants.QUEUE_USAGE) == (20.0, 30.0)
    assert queue_timing(config, constants.QUEUE_AUDIT, 30.0) == (30.0, 60.0), "audit: 30 s under a 60 s lease"
    configured = make_config(
        tmp_path, {"outbox": {"queues": {constants.QUEUE_AUDIT: {"timeout_seconds": 5}}}}
    )
    assert queue_timing(configured, constants.QUEUE_AUDIT, 30.0) == (5.0, 30.0)


async def test_usage_is_published_and_failures_map_to_retry_or_reject(
    routed: Setup, database: databases.Database
) -> None:
    await routed.send(constants.QUEUE_USAGE, usage_event("r1"))
    assert await routed.outbox.run_once() == 1
    assert routed.policy.events == [usage_event("r1")]

    routed.policy.failures = [TransientError("ledger busy")]
    await routed.send(constants.QUEUE_USAGE, usage_event("r2"))
    assert await routed.outbox.run_once() == 0
    assert await routed.attempts(constants.QUEUE_USAGE) == [0, 1]

    routed.policy.failures = [PermanentError("unknown tenant")]
    await database.execute(sa.update(outbox_processor).values(retry_at=None))
    assert await routed.outbox.run_once() == 1
    [letter] = await list_dead_letters(database, constants.QUEUE_USAGE)
    assert letter.last_error == "unknown tenant"

    await routed.send(constants.QUEUE_USAGE, b"{not json")
    assert await routed.outbox.run_once() == 1
    letters = await list_dead_letters(database, constants.QUEUE_USAGE)
    assert len(letters) == 2 and "undecodable" in letters[0].last_error


async def test_usage_without_a_policy_plugin_is_retried_not_lost(
    routed: Setup, database: databases.Database
) -> None:
    routed.host.unregister("policy")
    await routed.send(constants.QUEUE_USAGE, usage_event("r1"))
    assert await routed.outbox.run_once() == 0
    assert await routed.attempts(constants.QUEUE_USAGE) == [0, 1]
    statuses = [s for s in await routed.outbox.status() if s.queue == constants.QUEUE_USAGE and s.backlog]
    assert (
        statuses[0].last_error is not None and "model_policy plugin not available" in statuses[0].last_error
    )

    routed.host.register("policy", routed.policy)
    await database.execute(sa.update(outbox_processor).values(retry_at=None))
    assert await routed.outbox.run_once() == 1
    assert [e.request_id for e in routed.policy.events] == ["r1"]
    assert await list_dead_letters(database, constants.QUEUE_USAGE) == []


async def test_audit_envelopes_reach_the_hook_of_their_type(routed: Setup) -> None:
    for event in (turn_event(), mutation_event("turn_retry"), mutation_event("turn_edit"), delete_event()):
        await routed.send(constants.QUEUE_AUDIT, AuditEnvelope.wrap(event))
    assert await routed.outbox.run_once() == 4
    assert [hook for hook, _ in routed.audit.calls] == ["turn", "retry", "edit", "delete"]
    assert routed.audit.calls[0][1] == turn_event()
    assert routed.audit.calls[3][1] == delete_event()


async def test_audit_failures_timeouts_and_bad_payloads(routed: Setup, database: databases.Database) -> None:
    # A hook that hangs past the audit timeout (0.3 s here) is retried; so is a transient error.
    routed.audit.failures = [5.0]
    await routed.send(constants.QUEUE_AUDIT, AuditEnvelope.wrap(turn_event()))
    assert await routed.outbox.run_once() == 0
    [status] = [s for s in await routed.outbox.status() if s.queue == constants.QUEUE_AUDIT and s.backlog]
    assert status.attempts == 1
    assert status.last_error is not None and "timed out" in status.last_error

    routed.audit.failures = [PluginTimeout("slow"), PermanentError("refused")]
    for _ in range(2):
        await database.execute(sa.update(outbox_processor).values(retry_at=None))
        await routed.outbox.run_once()
    [letter] = await list_dead_letters(database, constants.QUEUE_AUDIT)
    assert (letter.last_error, letter.attempts) == ("refused", 3)

    await routed.send(constants.QUEUE_AUDIT, b'{"type": "turn", "event": {"event_type": "nope"}}')
    await routed.send(constants.QUEUE_AUDIT, b"\xff\xfe")
    assert await routed.outbox.run_once() == 2
    assert len(await list_dead_letters(database, constants.QUEUE_AUDIT)) == 3
    assert routed.audit.calls == []


async def test_audit_without_an_audit_plugin_is_dropped_and_counted(
    database: databases.Database, engine_name: str, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    async for setup in build(database, engine_name, routing_config(tmp_path, audit_vendor=""), registry):
        await setup.send(constants.QUEUE_AUDIT, AuditEnvelope.wrap(turn_event()))
        await setup.send(constants.QUEUE_AUDIT, b"not even json")
        assert await setup.outbox.run_once() == 2
        assert await list_dead_letters(database, constants.QUEUE_AUDIT) == []
        assert setup.audit.calls == []
        assert (
            registry.get_sample_value("minichat_outbox_dropped_total", {"queue": constants.QUEUE_AUDIT}) == 2
        )
        assert (
            registry.get_sample_value("minichat_outbox_delivered_total", {"queue": constants.QUEUE_AUDIT})
            == 2
        )


async def test_domain_queues_register_with_the_same_rules(routed: Setup, tmp_path: Path) -> None:
    outbox = Outbox(routed.outbox.database, routed.outbox.config, dialect=routed.outbox.dialect)

    async def cleanup(delivery: Any) -> None:
        return None

    config = routing_config(tmp_path)
    spec = register_domain_queue(outbox, config, constants.QUEUE_CHAT_CLEANUP, cleanup)
    assert (spec.partitions, spec.timeout, spec.lease_seconds) == (2, 20.0, 40.0)
