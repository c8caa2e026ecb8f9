"""The `policy_static` plugin: model policy read from its settings section, usage written to a ledger.

The read hooks are `async def` because they only touch memory (no worker thread needed);
`publish_usage` is sync because it writes and fsyncs a file, so the host runs it in a worker thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from minichat_host import hookimpl
from minichat_host.config import Config
from minichat_host.plugins.errors import PermanentError
from minichat_host.plugins.types import (
    Capability,
    PluginSettings,
    PolicySnapshot,
    UsageEvent,
    UserLimits,
)
from minichat_policy_static.ledger import DEFAULT_FILENAME, UsageLedger
from minichat_policy_static.settings import SECTION, PolicyStaticSettings

POLICY_VERSION = 1


class PolicyVersionNotFound(PermanentError):
    """The requested policy version does not exist (this plugin only ever has version 1)."""


class PolicyStaticPlugin:
    """Model policy for vendor `minichat` (configurable) from `plugins.settings.policy_static`."""

    def __init__(self) -> None:
        self.settings = PolicyStaticSettings()
        self._ledger: UsageLedger | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    @hookimpl
    def minichat_plugin_settings(self) -> PluginSettings:
        return PluginSettings(section=SECTION, struct=PolicyStaticSettings)

    @hookimpl
    def minichat_configure(self, settings: PolicyStaticSettings, config: Config, data_dir: Path) -> None:
        unknown = sorted({e.provider_id for e in settings.model_catalog} - set(config.providers))
        if unknown:
            raise ValueError(
                f"plugins.settings.{SECTION}.model_catalog names provider(s) missing from `providers`: "
                f"{', '.join(unknown)}"
            )
        self.settings = settings
        path = Path(settings.ledger_path) if settings.ledger_path else Path(data_dir) / DEFAULT_FILENAME
        self._ledger = UsageLedger(path)

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [
            Capability(
                capability="model_policy", vendor=self.settings.vendor, priority=self.settings.priority
            )
        ]

    # --- model policy ---------------------------------------------------------------------------
    @hookimpl
    async def minichat_get_current_policy_version(self) -> int:
        return POLICY_VERSION

    @hookimpl
    async def minichat_get_policy_snapshot(self, user_id: str, policy_version: int) -> PolicySnapshot:
        self._check_version(policy_version)
        return PolicySnapshot(
            user_id=user_id,
            policy_version=POLICY_VERSION,
            model_catalog=list(self.settings.model_catalog),
            kill_switches=self.settings.kill_switches,
        )

    @hookimpl
    async def minichat_get_user_limits(self, user_id: str, policy_version: int) -> UserLimits:
        self._check_version(policy_version)
        return UserLimits(
            user_id=user_id,
            policy_version=POLICY_VERSION,
            standard=self.settings.default_standard_limits,
            premium=self.settings.default_premium_limits,
        )

    @hookimpl
    async def minichat_check_user_license(self) -> bool:
        return True

    @hookimpl
    def minichat_publish_usage(self, event: UsageEvent | dict[str, Any]) -> None:
        try:
            usage = event if isinstance(event, UsageEvent) else msgspec.convert(event, UsageEvent)
        except msgspec.ValidationError as exc:
            raise PermanentError(f"not a usage event: {exc}") from None  # redelivery cannot fix it
        self.ledger.append(usage)

    # --- reporting ------------------------------------------------------------------------------
    @property
    def ledger(self) -> UsageLedger:
        if self._ledger is None:
            raise PermanentError("policy_static is not configured (the host did not call minichat_configure)")
        return self._ledger

    def ledger_report(self) -> dict[str, Any]:
        """Event count, total credits and per-model totals of the ledger this plugin writes."""
        return self.ledger.report()

    @staticmethod
    def _check_version(policy_version: int) -> None:
        if policy_version != POLICY_VERSION:
            raise PolicyVersionNotFound(
                f"policy version {policy_version} not found "
                f"(the static policy has only version {POLICY_VERSION})"
            )
