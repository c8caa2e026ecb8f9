"""The plugin host: discovery, per-plugin settings, vendor resolution and hook calls under a timeout.

Built-in default plugins and vendor plugins go through the very same path: both are pluggy plugins
registered on one `PluginManager("minichat")`, both declare capabilities with `minichat_capabilities`, and
the host picks one plugin per configured capability (storage: per provider). Capability hooks are never
broadcast: `call()` invokes only the chosen plugin's implementation.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import time
import types
from collections.abc import Callable, Coroutine, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from types import TracebackType
from typing import Any

import msgspec
import msgspec.inspect as msgspec_inspect
import pluggy

from minichat_host import __version__ as host_version
from minichat_host import constants
from minichat_host.config import Config
from minichat_host.plugins import hookspecs
from minichat_host.plugins.builtin import BUILTIN_PLUGINS
from minichat_host.plugins.errors import PermanentError, PluginConfigError, PluginTimeout
from minichat_host.plugins.types import Capability, PluginSettings

log = logging.getLogger(__name__)
trace_log = logging.getLogger("minichat.plugins.trace")

# Hooks the host calls on every plugin that implements them (one impl at a time, never as a pluggy broadcast).
LIFECYCLE_HOOKS: frozenset[str] = frozenset(
    {"minichat_capabilities", "minichat_plugin_settings", "minichat_configure", "minichat_shutdown"}
)

# Which hooks belong to which capability; `call()` refuses a hook outside the capability it names.
CAPABILITY_HOOKS: dict[str, frozenset[str]] = {
    constants.CAP_MODEL_POLICY: frozenset(
        {
            "minichat_get_current_policy_version",
            "minichat_get_policy_snapshot",
            "minichat_get_user_limits",
            "minichat_check_user_license",
            "minichat_publish_usage",
        }
    ),
    constants.CAP_AUDIT: frozenset(
        {
            "minichat_emit_turn_audit",
            "minichat_emit_turn_retry_audit",
            "minichat_emit_turn_edit_audit",
            "minichat_emit_turn_delete_audit",
        }
    ),
    constants.CAP_STORAGE: frozenset(
        {
            "minichat_storage_upload_file",
            "minichat_storage_delete_file",
            "minichat_storage_create_vector_store",
            "minichat_storage_add_file_to_vector_store",
            "minichat_storage_delete_vector_store",
            "minichat_storage_search",
        }
    ),
}

# Capabilities that may be switched off with an empty vendor (the model policy is always required).
_OPTIONAL_CAPABILITIES = frozenset({constants.CAP_AUDIT, constants.CAP_STORAGE})
_TRUTHY = frozenset({"1", "true", "yes", "on"})
_PLUGIN_THREADS = 32


@dataclass
class _PluginRecord:
    name: str
    plugin: object
    source: str  # "builtin" | "entry_point" | "runtime"
    order: int
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None
    settings_section: str | None = None
    settings_struct: type[msgspec.Struct] | None = None
    settings: object | None = None
    capabilities: list[Capability] = field(default_factory=list)
    ready: bool = False  # settings validated, configured, capabilities collected
    configured: bool = False  # minichat_configure ran: minichat_shutdown is owed


@dataclass(frozen=True)
class Resolution:
    """Which plugin serves one capability (storage: for one provider), and why."""

    capability: str
    provider_id: str | None
    config_key: str
    vendor: str
    plugin: str | None
    priority: int | None
    reason: str
    candidates: tuple[dict[str, Any], ...]
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "capability": self.capability,
            "provider_id": self.provider_id,
            "config_key": self.config_key,
            "vendor": self.vendor,
            "plugin": self.plugin,
            "priority": self.priority,
            "reason": self.reason,
            "candidates": [dict(c) for c in self.candidates],
        }
        if self.error is not None:
            result["error"] = self.error
        return result


_PlanKey = tuple[str, str, str | None, frozenset[str]]


@types.coroutine
def _resumed(coroutine: Coroutine[Any, Any, Any], waiting_on: Any) -> Generator[Any, Any, Any]:
    """Go on awaiting a coroutine whose first step already ran and suspended on `waiting_on`: what the
    task sends or throws in goes through to it (a cancellation by the timeout included)."""
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:
            try:
                waiting_on = coroutine.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = coroutine.send(sent)
            except StopIteration as done:
                return done.value


class PluginHost:
    """Loads plugins, validates their settings, resolves capabilities and calls their hooks."""

    def __init__(
        self,
        config: Config,
        *,
        load_entry_points: bool = True,
        extra_plugins: Sequence[tuple[str, object]] = (),
    ) -> None:
        self._config = config
        self._pm = pluggy.PluginManager(constants.ENTRY_POINT_GROUP)
        self._pm.add_hookspecs(hookspecs)
        self._records: dict[str, _PluginRecord] = {}
        self._order = 0
        self._resolved: dict[tuple[str, str | None], Resolution] = {}
        # (capability, hook, provider_id, argument names) → (plugin name, function, arguments it accepts):
        # the checks of `call` run once per shape of call, not on every turn. Cleared with `_resolved`.
        self._call_plans: dict[
            tuple[str, str, str | None, frozenset[str]], tuple[str, Any, frozenset[str]]
        ] = {}
        self._started = False
        self._closed = False
        self._executor: ThreadPoolExecutor | None = None
        self._trace = os.environ.get(constants.ENV_TRACE_PLUGINS, "").strip().lower() in _TRUTHY

        for name, factory in BUILTIN_PLUGINS:
            self._add(name, factory(), source="builtin", distribution="minichat-host", version=host_version)
        if load_entry_points:
            self._load_entry_points()
        for name, plugin in extra_plugins:
            self._add(name, plugin, source="runtime")

    # --- discovery ------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        raw = os.environ.get(constants.ENV_LOAD_PLUGINS)
        allowed = None if raw is None else {n.strip() for n in raw.split(",") if n.strip()}
        found: set[str] = set()
        # Sorted so that ties in priority ("first registered wins") do not depend on the file system.
        for ep in sorted(metadata.entry_points(group=constants.ENTRY_POINT_GROUP), key=lambda e: e.name):
            found.add(ep.name)
            if allowed is not None and ep.name not in allowed:
                log.debug("plugin entry point %r skipped (%s)", ep.name, constants.ENV_LOAD_PLUGINS)
                continue
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            where = f"entry point {ep.name!r} ({ep.value}) of distribution {dist or 'unknown'}"
            try:
                loaded = ep.load()
                # A class is instantiated so each host gets its own plugin state (files, sessions).
                plugin = loaded() if inspect.isclass(loaded) else loaded
            except Exception as exc:
                raise PluginConfigError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
            self._add(
                ep.name, plugin, source="entry_point", distribution=dist, version=version, entry_point=where
            )
        if allowed:
            missing = sorted(allowed - found)
            if missing:
                log.warning(
                    "%s names plugin(s) that are not installed: %s",
                    constants.ENV_LOAD_PLUGINS,
                    ", ".join(missing),
                )

    def _add(
        self,
        name: str,
        plugin: object,
        *,
        source: str,
        distribution: str | None = None,
        version: str | None = None,
        entry_point: str | None = None,
    ) -> _PluginRecord:
        what = entry_point or f"plugin {name!r}"
        if name in self._records:
            raise PluginConfigError(f"{what}: a plugin named {name!r} is already registered")
        try:
            self._pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginConfigError(f"{what}: invalid hook implementation: {exc}") from exc
        except ValueError as exc:
            raise PluginConfigError(f"{what}: cannot register: {exc}") from exc
        unknown = sorted(
            caller.name for caller in self._pm.get_hookcallers(plugin) or [] if caller.spec is None
        )
        if unknown:
            self._pm.unregister(plugin)
            raise PluginConfigError(f"{what}: implements unknown hook(s): {', '.join(unknown)}")
        self._order += 1
        record = _PluginRecord(
            name=name,
            plugin=plugin,
            source=source,
            order=self._order,
            distribution=distribution,
            version=version,
            entry_point=entry_point,
        )
        self._records[name] = record
        self._resolved.clear()
        self._call_plans.clear()
        return record

    # --- runtime registration -------------------------------------------------------------------
    def register(self, name: str, plugin: object) -> str:
        """Register a plugin. After `start()` it is set up at once, so its set-up hooks must be sync."""
        record = self._add(name, plugin, source="runtime")
        if self._started:
            try:
                self._setup_now(record)
            except BaseException:
                self._drop(name)
                raise
        return name

    async def add(self, name: str, plugin: object) -> str:
        """Register a plugin and set it up, awaiting async `minichat_configure` and friends."""
        record = self._add(name, plugin, source="runtime")
        if self._started:
            try:
                await self._setup([record])
            except BaseException:
                self._drop(name)
                raise
        return name

    def unregister(self, name: str) -> object:
        """Remove a plugin (its `minichat_shutdown` is not called); resolutions are redone lazily."""
        if name not in self._records:
            raise KeyError(f"no plugin named {name!r}")
        return self._drop(name).plugin

    def _drop(self, name: str) -> _PluginRecord:
        record = self._records.pop(name)
        self._pm.unregister(name=name)
        self._resolved.clear()
        self._call_plans.clear()
        return record

    def is_registered(self, name: str) -> bool:
        return name in self._records

    # --- start-up -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Validate settings, configure every plugin, collect capabilities and resolve them all up front."""
        if self._started:
            return
        records = list(self._records.values())
        try:
            await self._setup(records)
            self._started = True
            for capability, provider_id in self._targets():
                self._resolve_or_raise(capability, provider_id)
        except BaseException:
            await self._shutdown_configured()
            raise

    async def __aenter__(self) -> PluginHost:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _setup(self, records: Sequence[_PluginRecord]) -> None:
        timeout = self._config.plugins.hook_timeout_seconds
        for record in records:
            declared = await self._call_lifecycle(record, "minichat_plugin_settings", {}, timeout)
            self._accept_settings_declaration(record, declared)
        self._check_unknown_sections()
        errors = [e for e in (self._decode_settings(r) for r in records) if e]
        if errors:
            raise PluginConfigError("invalid plugin settings:\n  " + "\n  ".join(errors))
        for record in records:
            try:
                await self._call_lifecycle(
                    record, "minichat_configure", self._configure_kwargs(record), timeout
                )
            except PluginConfigError:
                raise
            except Exception as exc:
                raise PluginConfigError(
                    f"plugin {record.name!r} failed to configure: {type(exc).__name__}: {exc}"
                ) from exc
            record.configured = True
            declared = await self._call_lifecycle(record, "minichat_capabilities", {}, timeout)
            record.capabilities = self._accept_capabilities(record, declared)
            record.ready = True
        self._resolved.clear()
        self._call_plans.clear()

    def _setup_now(self, record: _PluginRecord) -> None:
        """Synchronous `_setup` for `register()` after start: set-up hooks may not return awaitables."""

        def run(hook: str, kwargs: dict[str, Any]) -> Any:
            impl = self._impl_of(record, hook)
            if impl is None:
                return None
            result = impl.function(**self._accepted_kwargs(impl, kwargs))
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise PluginConfigError(
                    f"plugin {record.name!r}: {hook} is async; register it with `await host.add(...)`"
                )
            return result

        self._accept_settings_declaration(record, run("minichat_plugin_settings", {}))
        self._check_unknown_sections()
        error = self._decode_settings(record)
        if error:
            raise PluginConfigError(f"invalid plugin settings: {error}")
        try:
            run("minichat_configure", self._configure_kwargs(record))
        except PluginConfigError:
            raise
        except Exception as exc:
            raise PluginConfigError(
                f"plugin {record.name!r} failed to configure: {type(exc).__name__}: {exc}"
            ) from exc
        record.configured = True
        record.capabilities = self._accept_capabilities(record, run("minichat_capabilities", {}))
        record.ready = True
        self._resolved.clear()
        self._call_plans.clear()

    def _configure_kwargs(self, record: _PluginRecord) -> dict[str, Any]:
        return {"settings": record.settings, "config": self._config, "data_dir": self._config.data_dir()}

    def _accept_settings_declaration(self, record: _PluginRecord, declared: object) -> None:
        if declared is None:
            return
        if not isinstance(declared, PluginSettings):
            raise PluginConfigError(
                f"plugin {record.name!r}: minichat_plugin_settings must return PluginSettings, "
                f"got {type(declared).__name__}"
            )
        struct = declared.struct
        if not (inspect.isclass(struct) and issubclass(struct, msgspec.Struct)):
            raise PluginConfigError(
                f"plugin {record.name!r}: PluginSettings.struct must be a msgspec.Struct class"
            )
        for other in self._records.values():
            if other is not record and other.settings_section == declared.section:
                raise PluginConfigError(
                    f"plugins.settings.{declared.section} is claimed by both {other.name!r} "
                    f"and {record.name!r}"
                )
        record.settings_section = declared.section
        record.settings_struct = struct

    def _check_unknown_sections(self) -> None:
        claimed = {r.settings_section for r in self._records.values() if r.settings_section}
        unknown = sorted(set(self._config.plugins.settings) - claimed)
        if unknown:
            raise PluginConfigError(
                f"plugins.settings has section(s) no loaded plugin claims: {', '.join(unknown)}; "
                f"known sections: {', '.join(sorted(claimed)) or 'none'}"
            )

    def _decode_settings(self, record: _PluginRecord) -> str | None:
        """Decode the plugin's section into its struct; return an error message naming the key path."""
        if record.settings_struct is None or record.settings_section is None:
            record.settings = None
            return None
        section = record.settings_section
        raw = self._config.plugins.settings.get(section, {})
        try:
            value = msgspec.convert(raw, record.settings_struct, strict=False)
        except msgspec.ValidationError as exc:
            return f"plugins.settings.{section}: {exc}"
        # Unknown keys are refused at every depth, even when the plugin's struct tolerates them.
        unknown = _unknown_field(raw, msgspec_inspect.type_info(record.settings_struct), "$")
        if unknown is not None:
            return f"plugins.settings.{section}: {unknown}"
        record.settings = value
        return None

    def _accept_capabilities(self, record: _PluginRecord, declared: object) -> list[Capability]:
        if declared is None:
            return []
        items = declared if isinstance(declared, list | tuple) else [declared]
        result: list[Capability] = []
        for item in items:
            try:
                cap = item if isinstance(item, Capability) else msgspec.convert(item, Capability)
            except msgspec.ValidationError as exc:
                raise PluginConfigError(
                    f"plugin {record.name!r}: invalid capability {item!r}: {exc}"
                ) from None
            # Capability(...) built in Python is not validated by msgspec, so check what matters here.
            if (
                cap.capability not in constants.CAPABILITIES
                or not cap.vendor
                or not isinstance(cap.priority, int)
            ):
                raise PluginConfigError(f"plugin {record.name!r}: invalid capability {cap!r}")
            result.append(cap)
        return result

    # --- resolution -----------------------------------------------------------------------------
    def _targets(self) -> list[tuple[str, str | None]]:
        targets: list[tuple[str, str | None]] = [
            (constants.CAP_MODEL_POLICY, None),
            (constants.CAP_AUDIT, None),
        ]
        targets += [(constants.CAP_STORAGE, pid) for pid in sorted(self._config.providers)]
        return targets

    def _vendor_for(self, capability: str, provider_id: str | None) -> tuple[str, str]:
        """The configured vendor for a capability and the config key that names it."""
        if capability == constants.CAP_MODEL_POLICY:
            return self._config.plugins.model_policy_vendor, "plugins.model_policy_vendor"
        if capability == constants.CAP_AUDIT:
            return self._config.plugins.audit_vendor, "plugins.audit_vendor"
        if capability == constants.CAP_STORAGE:
            if provider_id is None:
                raise ValueError("the storage capability is resolved per provider: pass provider_id")
            provider = self._config.providers.get(provider_id)
            if provider is None:
                raise PluginConfigError(
                    f"unknown provider {provider_id!r}; configured providers: "
                    f"{', '.join(sorted(self._config.providers)) or 'none'}"
                )
            return provider.storage, f"providers.{provider_id}.storage"
        raise ValueError(f"unknown capability {capability!r}; known: {', '.join(constants.CAPABILITIES)}")

    def _compute_resolution(self, capability: str, provider_id: str | None) -> Resolution:
        vendor, config_key = self._vendor_for(capability, provider_id)
        if capability != constants.CAP_STORAGE:
            provider_id = None
        offers = [
            (record, cap)
            for record in sorted(self._records.values(), key=lambda r: r.order)
            if record.ready
            for cap in record.capabilities
            if cap.capability == capability
        ]
        matching = sorted(
            (o for o in offers if o[1].vendor == vendor), key=lambda o: (o[1].priority, o[0].order)
        )

        def resolution(
            plugin: str | None, priority: int | None, reason: str, error: str | None
        ) -> Resolution:
            candidates = tuple(
                {
                    "plugin": record.name,
                    "vendor": cap.vendor,
                    "priority": cap.priority,
                    "chosen": record.name == plugin and cap.vendor == vendor and cap.priority == priority,
                    "reason": _candidate_reason(record, cap, vendor, matching),
                }
                for record, cap in offers
            )
            return Resolution(
                capability, provider_id, config_key, vendor, plugin, priority, reason, candidates, error
            )

        if vendor == "" and capability in _OPTIONAL_CAPABILITIES:
            return resolution(None, None, f"not configured ({config_key} is empty)", None)
        if not matching:
            installed = sorted({cap.vendor for _, cap in offers})
            error = (
                f"{config_key} = {vendor!r}: no loaded plugin offers {capability} for vendor {vendor!r}; "
                f"installed {capability} vendors: {', '.join(repr(v) for v in installed) or 'none'}"
            )
            return resolution(None, None, error, error)
        chosen_record, chosen_cap = matching[0]
        if len(matching) == 1:
            reason = (
                f"vendor {vendor!r} matched 1 plugin: {chosen_record.name!r} (priority {chosen_cap.priority})"
            )
        else:
            others = ", ".join(f"{r.name!r} (priority {c.priority})" for r, c in matching[1:])
            reason = (
                f"vendor {vendor!r} matched {len(matching)} plugins; picked {chosen_record.name!r} "
                f"(priority {chosen_cap.priority}) over {others}"
            )
            if matching[1][1].priority == chosen_cap.priority:
                reason += " (equal priority: the first registered wins)"
        return resolution(chosen_record.name, chosen_cap.priority, reason, None)

    def _resolve_or_raise(self, capability: str, provider_id: str | None) -> Resolution:
        key = (capability, provider_id if capability == constants.CAP_STORAGE else None)
        cached = self._resolved.get(key)
        if cached is not None:
            return cached
        resolution = self._compute_resolution(capability, provider_id)
        if resolution.error is not None:
            raise PluginConfigError(resolution.error)  # errors are not cached: a later register may fix them
        self._resolved[key] = resolution
        return resolution

    def resolve(self, capability: str, provider_id: str | None = None) -> Resolution:
        """The (cached) resolution of a capability; PluginConfigError when no plugin serves it."""
        return self._resolve_or_raise(capability, provider_id)

    def has(self, capability: str, provider_id: str | None = None) -> bool:
        """True when a plugin serves this capability (storage: for this provider)."""
        try:
            return self._resolve_or_raise(capability, provider_id).plugin is not None
        except PluginConfigError:
            return False

    def explain(self) -> list[dict[str, Any]]:
        """For every configured capability (storage per provider): the chosen plugin and why."""
        result: list[dict[str, Any]] = []
        for capability, provider_id in self._targets():
            try:
                result.append(self._resolve_or_raise(capability, provider_id).as_dict())
            except PluginConfigError:
                result.append(self._compute_resolution(capability, provider_id).as_dict())
        return result

    def plugins(self) -> list[dict[str, Any]]:
        """Every registered plugin: name, where it came from, its settings section and capabilities."""
        return [
            {
                "name": r.name,
                "source": r.source,
                "distribution": r.distribution,
                "version": r.version,
                "settings_section": r.settings_section,
                "capabilities": [
                    {"capability": c.capability, "vendor": c.vendor, "priority": c.priority}
                    for c in r.capabilities
                ],
                "hooks": sorted(c.name for c in self._pm.get_hookcallers(r.plugin) or []),
            }
            for r in sorted(self._records.values(), key=lambda r: r.order)
        ]

    # --- hook calls -----------------------------------------------------------------------------
    async def call(
        self,
        capability: str,
        hook: str,
        *,
        provider_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the per-call override callers ask for
        **kwargs: Any,
    ) -> Any:
        """Call `hook` on the plugin that `capability` resolved to (storage: for `provider_id`).

        `hook` may omit the `minichat_` prefix. Only the keyword arguments the implementation accepts are
        passed (`provider_id` included). Sync implementations run in a worker thread. A timeout raises
        PluginTimeout; everything the plugin raises propagates unchanged.
        """
        hook_name = hook if hook.startswith("minichat_") else f"minichat_{hook}"
        seconds = timeout if timeout is not None else self._config.plugins.hook_timeout_seconds
        plan_key = (capability, hook_name, provider_id, frozenset(kwargs))
        plan = self._call_plans.get(plan_key)
        if plan is not None:
            plugin_name, function, accepted = plan
            if capability == constants.CAP_STORAGE:
                kwargs["provider_id"] = provider_id
            arguments = {k: v for k, v in kwargs.items() if k in accepted}
            return await self._invoke(plugin_name, hook_name, function, arguments, seconds)
        if capability not in CAPABILITY_HOOKS:
            raise ValueError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITY_HOOKS)}")
        if hook_name not in CAPABILITY_HOOKS[capability]:
            raise ValueError(f"{hook_name} is not a hook of the {capability} capability")
        resolution = self._resolve_or_raise(capability, provider_id)
        if resolution.plugin is None:
            raise PluginConfigError(f"{capability} is {resolution.reason}")
        record = self._records[resolution.plugin]
        impl = self._impl_of(record, hook_name)
        if impl is None:
            raise PermanentError(f"plugin {record.name!r} does not implement hook {hook_name}")
        if capability == constants.CAP_STORAGE:
            kwargs["provider_id"] = provider_id
        elif provider_id is not None:
            raise ValueError(f"provider_id applies to the storage capability only, not {capability}")
        spec_args = set(getattr(self._pm.hook, hook_name).spec.argnames)
        unknown = sorted(set(kwargs) - spec_args)
        if unknown:
            raise TypeError(f"{hook_name} has no argument(s) {', '.join(unknown)}")
        missing = [a for a in impl.argnames if a not in kwargs]
        if missing:
            raise TypeError(f"{hook_name} call is missing argument(s) {', '.join(missing)}")
        self._call_plans[plan_key] = (
            record.name,
            impl.function,
            frozenset(impl.argnames) | frozenset(impl.kwargnames),
        )
        return await self._invoke(
            record.name, hook_name, impl.function, self._accepted_kwargs(impl, kwargs), seconds
        )

    def _impl_of(self, record: _PluginRecord, hook_name: str) -> pluggy.HookImpl | None:
        caller = getattr(self._pm.hook, hook_name, None)
        if caller is None:
            return None
        for impl in caller.get_hookimpls():
            if impl.plugin_name == record.name and not (impl.hookwrapper or impl.wrapper):
                return impl  # type: ignore[no-any-return]
        return None

    @staticmethod
    def _accepted_kwargs(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> dict[str, Any]:
        accepted = set(impl.argnames) | set(impl.kwargnames)
        return {k: v for k, v in kwargs.items() if k in accepted}

    async def _call_lifecycle(
        self, record: _PluginRecord, hook_name: str, kwargs: dict[str, Any], seconds: float
    ) -> Any:
        impl = self._impl_of(record, hook_name)
        if impl is None:
            return None
        return await self._invoke(
            record.name, hook_name, impl.function, self._accepted_kwargs(impl, kwargs), seconds
        )

    async def _invoke(
        self,
        plugin_name: str,
        hook_name: str,
        function: Callable[..., Any],
        kwargs: dict[str, Any],
        seconds: float,
    ) -> Any:
        started = time.perf_counter()
        outcome = "ok"
        deadline: asyncio.Timeout | None = None
        try:
            if inspect.iscoroutinefunction(function):
                # Most hooks (a static policy, a cache hit) answer without suspending: run the coroutine's
                # first step here and arm the timeout only when it has to wait (a timer costs ~4 µs).
                coroutine = function(**kwargs)
                try:
                    waiting_on = coroutine.send(None)
                except StopIteration as done:
                    return done.value
                async with asyncio.timeout(seconds) as deadline:
                    return await _resumed(coroutine, waiting_on)
            async with asyncio.timeout(seconds) as deadline:
                return await self._run(function, kwargs)
        except TimeoutError:
            if deadline is not None and deadline.expired():
                outcome = "timeout"
                raise PluginTimeout(
                    f"plugin {plugin_name!r} hook {hook_name} timed out after {seconds:g} s"
                ) from None
            outcome = "error:TimeoutError"
            raise
        except BaseException as exc:
            outcome = f"error:{type(exc).__name__}"
            raise
        finally:
            if self._trace:
                # Never the arguments or the error text: they may carry secrets or user content.
                trace_log.info(
                    "plugin hook %s plugin=%s outcome=%s duration_ms=%.2f",
                    hook_name,
                    plugin_name,
                    outcome,
                    (time.perf_counter() - started) * 1000,
                )

    async def _run(self, function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """A sync implementation: in a worker thread."""
        # A blocking plugin must not freeze the event loop; a private pool keeps a hung plugin from
        # starving the loop's default executor (DNS resolution runs there).
        if self._executor is None:
            self._executor = ThreadPoolExecutor(_PLUGIN_THREADS, thread_name_prefix="minichat-plugin")
        context = contextvars.copy_context()
        call = functools.partial(context.run, function, **kwargs)
        result = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        if inspect.isawaitable(result):
            result = await result
        return result

    # --- shutdown -------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Call `minichat_shutdown` on every configured plugin (last registered first); idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._shutdown_configured()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _shutdown_configured(self) -> None:
        timeout = self._config.plugins.hook_timeout_seconds
        for record in sorted(self._records.values(), key=lambda r: r.order, reverse=True):
            if not record.configured:
                continue
            record.configured = False
            try:
                await self._call_lifecycle(record, "minichat_shutdown", {}, timeout)
            except Exception:
                log.exception("plugin %r failed to shut down", record.name)


def _candidate_reason(
    record: _PluginRecord,
    cap: Capability,
    vendor: str,
    matching: list[tuple[_PluginRecord, Capability]],
) -> str:
    if cap.vendor != vendor:
        return f"vendor {cap.vendor!r} is not the configured {vendor!r}"
    best_record, best_cap = matching[0]
    if best_record is record and best_cap is cap:
        return (
            "lowest priority among the vendor's plugins"
            if len(matching) > 1
            else "only plugin of this vendor"
        )
    if cap.priority > best_cap.priority:
        return f"priority {cap.priority} is higher than {best_record.name!r}'s {best_cap.priority}"
    return f"equal priority {cap.priority}; {best_record.name!r} was registered first"


def _unknown_field(value: object, info: msgspec_inspect.Type, path: str) -> str | None:
    """msgspec-style message for the first key that `info` has no field for, else None."""
    if isinstance(info, msgspec_inspect.Metadata):
        return _unknown_field(value, info.type, path)
    if isinstance(info, msgspec_inspect.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f for f in info.fields}
        for key, item in value.items():
            found = fields.get(key)
            if found is None:
                return f"Object contains unknown field `{key}` - at `{path}`"
            nested = _unknown_field(item, found.type, f"{path}.{key}")
            if nested:
                return nested
        return None
    if isinstance(info, msgspec_inspect.ListType | msgspec_inspect.VarTupleType) and isinstance(value, list):
        for index, item in enumerate(value):
            nested = _unknown_field(item, info.item_type, f"{path}[{index}]")
            if nested:
                return nested
        return None
    if isinstance(info, msgspec_inspect.DictType) and isinstance(value, dict):
        for key, item in value.items():
            nested = _unknown_field(item, info.value_type, f"{path}[{key!r}]")
            if nested:
                return nested
        return None
    if isinstance(info, msgspec_inspect.UnionType) and isinstance(value, dict):
        # Only an unambiguous union (one struct member and nothing else that takes a mapping) is checked.
        mappings = [t for t in info.types if not isinstance(t, msgspec_inspect.NoneType)]
        if len(mappings) == 1:
            return _unknown_field(value, mappings[0], path)
    return None


__all__ = ["CAPABILITY_HOOKS", "LIFECYCLE_HOOKS", "PluginHost", "Resolution"]
