"""A throw-away plugin for the turn tests: a model policy (catalog, kill switches, limits, versions) that
the test edits at run time, and a sink that records every usage and audit event the outbox delivers.

Registered on a running app with `minichat_host.testing.register_plugin`: it declares the `model_policy`
and `audit` capabilities for vendor `minichat` at priority 0, so it wins over the bundled plugins.
"""

from __future__ import annotations

import asyncio
import collections
import copy
from typing import Any

from minichat_host import hookimpl
from minichat_host.plugins.types import (
    Capability,
    GeneralConfig,
    KillSwitches,
    ModelCatalogEntry,
    ModelPreference,
    PolicySnapshot,
    TierLimits,
    ToolSupport,
    TurnAuditEvent,
    TurnDeleteAuditEvent,
    TurnMutationAuditEvent,
    UsageEvent,
    UserLimits,
)

BIG = 10**15


def model(
    model_id: str,
    *,
    tier: str = "standard",
    provider_id: str = "local",
    default: bool = False,
    **fields: Any,
) -> ModelCatalogEntry:
    values: dict[str, Any] = {
        "id": model_id,
        "provider_model_id": "minichat-local" if provider_id == "local" else "gpt-test",
        "display_name": model_id,
        "provider_id": provider_id,
        "tier": tier,
        "multimodal_capabilities": ["VISION_INPUT"],
        "max_output_tokens": 1000,
        "input_tokens_credit_multiplier_micro": 3_000_000 if tier == "premium" else 1_000_000,
        "output_tokens_credit_multiplier_micro": 15_000_000 if tier == "premium" else 3_000_000,
        "general_config": GeneralConfig(
            tool_support=ToolSupport(file_search=True, web_search=True, code_interpreter=True)
        ),
        "preference": ModelPreference(is_default=default),
    }
    values.update(fields)
    return ModelCatalogEntry(**values)


def default_catalog() -> list[ModelCatalogEntry]:
    return [
        model("local-premium", tier="premium", default=True),
        model("local-standard"),
        model("fake-premium", tier="premium", provider_id="fake"),
        model("fake-standard", provider_id="fake"),
        model("tiny-ctx", context_window=1300),
        model("short-input", max_input_tokens=200),
        model("no-provider", provider_id="nowhere"),
    ]


def limits(standard: int = BIG, premium: int = BIG) -> tuple[TierLimits, TierLimits]:
    return (
        TierLimits(limit_daily_credits_micro=standard, limit_monthly_credits_micro=standard),
        TierLimits(limit_daily_credits_micro=premium, limit_monthly_credits_micro=premium),
    )


class Recorder:
    """Policy + event sink. `versions[v]` is the catalog of policy version v; `current` picks one."""

    def __init__(self) -> None:
        self.versions: dict[int, list[ModelCatalogEntry]] = {1: default_catalog()}
        self.current = 1
        self.kill_switches = KillSwitches()
        self.standard, self.premium = limits()
        self.usage: list[UsageEvent] = []
        self.audit: list[Any] = []
        self.fail_usage = 0
        # `hold_limits(n)`: the limits hook waits for the gate, and `arrived` is set once n callers wait
        # (concurrent sends held at the same point before their quota decisions).
        self._limits_hold: tuple[int, asyncio.Event, asyncio.Event] | None = None
        self._limits_waiting = 0
        self._changed = asyncio.Event()

    # --- capabilities ---------------------------------------------------------------------------
    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [
            Capability(capability="model_policy", vendor="minichat", priority=0),
            Capability(capability="audit", vendor="minichat", priority=0),
        ]

    # --- policy -----------------------------------------------------------------------------------
    def add_version(self, catalog: list[ModelCatalogEntry]) -> int:
        version = max(self.versions) + 1
        self.versions[version] = copy.deepcopy(catalog)
        self.current = version
        return version

    def set_model(self, model_id: str, **fields: Any) -> None:
        """Change one entry of the current version in place."""
        catalog = self.versions[self.current]
        for index, entry in enumerate(catalog):
            if entry.id == model_id:
                values = {f: getattr(entry, f) for f in entry.__struct_fields__}
                values.update(fields)
                catalog[index] = ModelCatalogEntry(**values)
                return
        raise KeyError(model_id)

    @hookimpl
    async def minichat_get_current_policy_version(self) -> int:
        return self.current

    @hookimpl
    async def minichat_get_policy_snapshot(self, user_id: str, policy_version: int) -> PolicySnapshot:
        return PolicySnapshot(
            user_id=user_id,
            policy_version=policy_version,
            model_catalog=list(self.versions[policy_version]),
            kill_switches=self.kill_switches,
        )

    def hold_limits(self, callers: int) -> tuple[asyncio.Event, asyncio.Event]:
        """Hold the limits hook's callers until the returned gate is set; `arrived`: `callers` are held."""
        arrived, gate = asyncio.Event(), asyncio.Event()
        self._limits_hold, self._limits_waiting = (callers, arrived, gate), 0
        return arrived, gate

    @hookimpl
    async def minichat_get_user_limits(self, user_id: str, policy_version: int) -> UserLimits:
        if self._limits_hold is not None:
            expected, arrived, gate = self._limits_hold
            self._limits_waiting += 1
            if self._limits_waiting >= expected:
                arrived.set()
            await gate.wait()
        return UserLimits(
            user_id=user_id, policy_version=policy_version, standard=self.standard, premium=self.premium
        )

    # --- sinks --------------------------------------------------------------------------------------
    @hookimpl
    async def minichat_publish_usage(self, event: UsageEvent) -> None:
        if self.fail_usage:
            self.fail_usage -= 1
            raise RuntimeError("scripted usage failure")
        self.usage.append(event)
        self._changed.set()

    @hookimpl
    async def minichat_emit_turn_audit(self, event: TurnAuditEvent) -> None:
        self._record(event)

    @hookimpl
    async def minichat_emit_turn_retry_audit(self, event: TurnMutationAuditEvent) -> None:
        self._record(event)

    @hookimpl
    async def minichat_emit_turn_edit_audit(self, event: TurnMutationAuditEvent) -> None:
        self._record(event)

    @hookimpl
    async def minichat_emit_turn_delete_audit(self, event: TurnDeleteAuditEvent) -> None:
        self._record(event)

    def _record(self, event: Any) -> None:
        self.audit.append(event)
        self._changed.set()

    # --- queries ------------------------------------------------------------------------------------
    def usage_by_key(self) -> collections.Counter[str]:
        return collections.Counter(e.dedupe_key or "" for e in self.usage)

    def turn_audits(self) -> list[TurnAuditEvent]:
        return [e for e in self.audit if isinstance(e, TurnAuditEvent)]

    def turn_audits_by_turn(self) -> collections.Counter[str]:
        return collections.Counter(e.turn_id for e in self.turn_audits())

    async def wait_for(self, predicate: Any, seconds: float = 20.0) -> None:
        """Wait until `predicate()` holds (events arrive asynchronously through the outbox)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"condition not reached: {len(self.usage)} usage, {len(self.audit)} audit events recorded"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass
