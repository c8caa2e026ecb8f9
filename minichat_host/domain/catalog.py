"""The model policy as the chat API sees it: a gateway over the resolved `model_policy` plugin.

`CatalogService` asks the plugin for the caller's current policy version, the snapshot of that version
(model catalog + kill switches) and the user's credit limits, checks that what came back has the
documented shape, and turns any plugin failure (error, timeout, malformed answer) into
`PolicyUnavailable` (503) — the catalog is never guessed. The plugin is asked on every call, as the
original does (no cache: a kill switch takes effect on the next request).

Also here: the catalog rules the chat API applies (`default_model`, `find_enabled`, the `Model` wire
shape) and `QuotaStatusService`, which combines the user's limits with the quota ledger for
`GET /quota/status`.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import databases
import msgspec

from minichat_host import constants
from minichat_host.config import QuotaConfig
from minichat_host.db.repos import quota_ledger
from minichat_host.domain.errors import ModelNotFound, PolicyUnavailable
from minichat_host.domain.quota import QuotaStatusResponse, periods_for, quota_status
from minichat_host.domain.texts import uuid_text
from minichat_host.domain.wire import Model, ModelList
from minichat_host.plugins.types import ModelCatalogEntry, PolicySnapshot, UserLimits

log = logging.getLogger("minichat.catalog")

Clock = Callable[[], dt.datetime]
T = TypeVar("T")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class PolicyHookCaller(Protocol):
    """What the catalog needs of the plugin host (`PluginHost.call`); a fake in tests."""

    async def call(self, capability: str, hook: str, **kwargs: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class CurrentPolicy:
    """The caller's current policy version and its snapshot, fetched together."""

    version: int
    snapshot: PolicySnapshot


# --- catalog rules (pure) ----------------------------------------------------------------------------
def enabled_models(snapshot: PolicySnapshot) -> list[ModelCatalogEntry]:
    """The enabled catalog entries, in catalog order."""
    return [entry for entry in snapshot.model_catalog if entry.enabled]


def find_enabled(snapshot: PolicySnapshot, model_id: str) -> ModelCatalogEntry | None:
    """The enabled entry with this id, or None (unknown and disabled look the same to callers)."""
    for entry in snapshot.model_catalog:
        if entry.id == model_id and entry.enabled:
            return entry
    return None


def default_model(snapshot: PolicySnapshot) -> ModelCatalogEntry | None:
    """A new chat's model when none is asked for: the first enabled `is_default` entry, else the first
    enabled entry, else None."""
    enabled = enabled_models(snapshot)
    for entry in enabled:
        if entry.preference is not None and entry.preference.is_default:
            return entry
    return enabled[0] if enabled else None


def to_wire_model(entry: ModelCatalogEntry) -> Model:
    """The public view of a catalog entry (no provider ids, multipliers or policy internals)."""
    return Model(
        model_id=entry.id,
        display_name=entry.display_name,
        tier=entry.tier,
        multiplier_display=entry.multiplier_display,
        description=entry.description or None,
        multimodal_capabilities=list(entry.multimodal_capabilities),
        context_window=entry.context_window,
    )


# --- the gateway -------------------------------------------------------------------------------------
class CatalogService:
    """Reads the caller's model policy through the `model_policy` plugin."""

    def __init__(self, plugins: PolicyHookCaller) -> None:
        self._plugins = plugins

    async def _call(self, hook: str, result_type: type[T], **kwargs: Any) -> T:
        try:
            result = await self._plugins.call(constants.CAP_MODEL_POLICY, hook, **kwargs)
        except Exception as exc:
            log.warning("model policy hook %s failed: %s: %s", hook, type(exc).__name__, exc)
            raise PolicyUnavailable("The model policy is unavailable; try again shortly.") from exc
        if isinstance(result, result_type) and not isinstance(result, bool):
            return result
        try:
            # A plugin may answer with plain builtins or its own look-alike objects.
            return msgspec.convert(result, result_type, from_attributes=True)
        except (msgspec.ValidationError, TypeError) as exc:
            log.error("model policy hook %s returned a malformed %s: %s", hook, type(result).__name__, exc)
            raise PolicyUnavailable("The model policy returned an unusable answer.") from exc

    async def current_version(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> int:
        return await self._call(
            "minichat_get_current_policy_version",
            int,
            tenant_id=uuid_text(tenant_id),
            user_id=uuid_text(user_id),
        )

    async def snapshot(self, tenant_id: uuid.UUID, user_id: uuid.UUID, policy_version: int) -> PolicySnapshot:
        return await self._call(
            "minichat_get_policy_snapshot",
            PolicySnapshot,
            tenant_id=uuid_text(tenant_id),
            user_id=uuid_text(user_id),
            policy_version=policy_version,
        )

    async def user_limits(self, tenant_id: uuid.UUID, user_id: uuid.UUID, policy_version: int) -> UserLimits:
        return await self._call(
            "minichat_get_user_limits",
            UserLimits,
            tenant_id=uuid_text(tenant_id),
            user_id=uuid_text(user_id),
            policy_version=policy_version,
        )

    async def current_policy(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> CurrentPolicy:
        version = await self.current_version(tenant_id, user_id)
        return CurrentPolicy(version=version, snapshot=await self.snapshot(tenant_id, user_id, version))

    async def list_models(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> ModelList:
        policy = await self.current_policy(tenant_id, user_id)
        return ModelList(items=[to_wire_model(entry) for entry in enabled_models(policy.snapshot)])

    async def get_model(self, tenant_id: uuid.UUID, user_id: uuid.UUID, model_id: str) -> Model:
        policy = await self.current_policy(tenant_id, user_id)
        entry = find_enabled(policy.snapshot, model_id)
        if entry is None:
            raise ModelNotFound(f"Model not found: {model_id}")
        return to_wire_model(entry)


class QuotaStatusService:
    """`GET /quota/status`: the user's limits under the current policy against the quota ledger."""

    def __init__(
        self,
        database: databases.Database,
        catalog: CatalogService,
        quota: QuotaConfig,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self._database = database
        self._catalog = catalog
        self._quota = quota
        self._clock = clock

    async def status(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> QuotaStatusResponse:
        version = await self._catalog.current_version(tenant_id, user_id)
        limits = await self._catalog.user_limits(tenant_id, user_id, version)
        now = self._clock()
        usage = await quota_ledger.load_usage(self._database, tenant_id, user_id, periods_for(now))
        return quota_status(limits, usage, now, self._quota.warning_threshold_pct)
