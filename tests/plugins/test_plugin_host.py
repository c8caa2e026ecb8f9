"""PluginHost: discovery, env vars, settings, vendor + priority resolution, hook calls and their errors."""

from __future__ import annotations

import asyncio
import logging
import textwrap
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from minichat_host import PermanentError, TransientError, constants, hookimpl
from minichat_host.plugins.errors import PluginConfigError, PluginTimeout
from minichat_host.plugins.manager import CAPABILITY_HOOKS, LIFECYCLE_HOOKS, PluginHost
from minichat_host.plugins.types import Capability, PluginSettings
from minichat_host.testing import make_config

HostFactory = Callable[..., Awaitable[PluginHost]]

BUNDLED = {
    "policy_static": "minichat-policy-static",
    "audit_log": "minichat-audit-log",
    "storage_openai": "minichat-storage-openai",
    "storage_azure": "minichat-storage-azure",
}


class Policy:
    """The smallest model policy: enough for a host to start without the bundled plugins."""

    def __init__(self, vendor: str = "minichat", priority: int = 100) -> None:
        self.vendor, self.priority = vendor, priority

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability="model_policy", vendor=self.vendor, priority=self.priority)]

    @hookimpl
    async def minichat_get_current_policy_version(self) -> int:
        return 1


class Audit:
    """An audit plugin that remembers what it received and on which thread."""

    def __init__(self, vendor: str = "acme", priority: int = 100) -> None:
        self.vendor, self.priority = vendor, priority
        self.events: list[Any] = []
        self.threads: list[int] = []
        self.capability_calls = 0

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        self.capability_calls += 1
        return [Capability(capability="audit", vendor=self.vendor, priority=self.priority)]

    @hookimpl
    def minichat_emit_turn_audit(self, event: Any) -> str:
        self.threads.append(threading.get_ident())
        self.events.append(event)
        return f"sync:{self.vendor}:{self.priority}"

    @hookimpl
    async def minichat_emit_turn_delete_audit(self, event: Any) -> str:
        self.threads.append(threading.get_ident())
        self.events.append(event)
        return "async"


NO_AUDIT: dict[str, Any] = {"plugins": {"audit_vendor": ""}}


def acme_audit_config(**plugins: Any) -> dict[str, Any]:
    return {"plugins": {"audit_vendor": "acme", **plugins}}


# --- discovery -------------------------------------------------------------------------------------
async def test_bundled_plugins_are_discovered_through_entry_points(start_host: HostFactory) -> None:
    host = await start_host(load_entry_points=True)
    found = {p["name"]: p for p in host.plugins()}
    for name, dist in BUNDLED.items():
        assert found[name]["source"] == "entry_point"
        assert found[name]["distribution"] == dist
        assert found[name]["version"]
    assert found["local_storage"]["source"] == "builtin"
    chosen = {(e["capability"], e["provider_id"]): e["plugin"] for e in host.explain()}
    assert chosen == {
        ("model_policy", None): "policy_static",
        ("audit", None): "audit_log",
        ("storage", "local"): "local_storage",
    }


async def test_load_plugins_env_restricts_entry_points(
    start_host: HostFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "policy_static, audit_log")
    host = await start_host(load_entry_points=True)
    assert {p["name"] for p in host.plugins()} == {"local_storage", "policy_static", "audit_log"}


async def test_empty_load_plugins_env_loads_only_builtins(
    start_host: HostFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "")
    host = await start_host(NO_AUDIT, plugins=[("policy", Policy())], load_entry_points=True)
    assert {p["name"] for p in host.plugins()} == {"local_storage", "policy"}


def _fake_distribution(root: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A distribution on sys.path as importlib.metadata sees an installed one."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(f"[minichat]\n{entry_points}\n", encoding="utf-8")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")


def test_broken_entry_point_fails_start_up_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_distribution(
        tmp_path / "site",
        "broken-plugin",
        "broken = broken_plugin_mod:Plugin",
        {"broken_plugin_mod": "1 / 0\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(PluginConfigError) as info:
        PluginHost(make_config(tmp_path))
    assert "'broken'" in str(info.value)
    assert "broken-plugin" in str(info.value)
    assert "ZeroDivisionError" in str(info.value)


async def test_module_entry_point_is_registered_as_a_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_host: HostFactory
) -> None:
    module = """
        from minichat_host import hookimpl
        from minichat_host.plugins.types import Capability

        @hookimpl
        def minichat_capabilities():
            return [Capability(capability="audit", vendor="modaudit", priority=7)]

        @hookimpl
        def minichat_emit_turn_audit(event):
            return ("module", event)
    """
    _fake_distribution(
        tmp_path / "site", "mod-audit", "mod_audit = mod_audit_plugin", {"mod_audit_plugin": module}
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "policy_static,mod_audit")
    host = await start_host({"plugins": {"audit_vendor": "modaudit"}}, load_entry_points=True)
    assert await host.call("audit", "emit_turn_audit", event={"x": 1}) == ("module", {"x": 1})
    entry = next(p for p in host.plugins() if p["name"] == "mod_audit")
    assert (entry["distribution"], entry["version"]) == ("mod-audit", "0.1")


def test_misspelled_hook_is_refused(tmp_path: Path) -> None:
    class Typo:
        @hookimpl
        def minichat_emit_turn_audi(self, event: Any) -> None:
            return None

    with pytest.raises(PluginConfigError, match=r"unknown hook.*minichat_emit_turn_audi"):
        PluginHost(make_config(tmp_path), load_entry_points=False, extra_plugins=[("typo", Typo())])


async def test_trace_env_logs_each_call_without_arguments(
    start_host: HostFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(constants.ENV_TRACE_PLUGINS, "1")
    audit = Audit()
    host = await start_host(acme_audit_config(), plugins=[("policy", Policy()), ("acme", audit)])
    caplog.set_level(logging.INFO, logger="minichat.plugins.trace")
    await host.call("audit", "emit_turn_audit", event={"api_key": "sk-very-secret-value"})
    records = [r for r in caplog.records if r.name == "minichat.plugins.trace"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "minichat_emit_turn_audit" in message
    assert "plugin=acme" in message
    assert "outcome=ok" in message
    assert "duration_ms=" in message
    assert "secret" not in caplog.text


async def test_no_trace_by_default(start_host: HostFactory, caplog: pytest.LogCaptureFixture) -> None:
    host = await start_host(acme_audit_config(), plugins=[("policy", Policy()), ("acme", Audit())])
    caplog.set_level(logging.INFO, logger="minichat.plugins.trace")
    await host.call("audit", "emit_turn_audit", event={})
    assert not [r for r in caplog.records if r.name == "minichat.plugins.trace"]


# --- resolution ------------------------------------------------------------------------------------
async def test_lowest_priority_of_the_vendor_wins_and_is_explained(start_host: HostFactory) -> None:
    high, low, other = Audit("acme", 100), Audit("acme", 10), Audit("zeta", 1)
    host = await start_host(
        acme_audit_config(), plugins=[("policy", Policy()), ("high", high), ("low", low), ("other", other)]
    )
    assert await host.call("audit", "emit_turn_audit", event={}) == "sync:acme:10"
    assert low.events and not high.events and not other.events
    audit = next(e for e in host.explain() if e["capability"] == "audit")
    assert audit["plugin"] == "low"
    assert audit["priority"] == 10
    assert (
        "vendor 'acme' matched 2 plugins; picked 'low' (priority 10) over 'high' (priority 100)"
        in audit["reason"]
    )
    reasons = {c["plugin"]: c for c in audit["candidates"]}
    assert reasons["low"]["chosen"] is True
    assert "higher than 'low'" in reasons["high"]["reason"]
    assert "'zeta' is not the configured 'acme'" in reasons["other"]["reason"]


async def test_equal_priority_first_registered_wins(start_host: HostFactory) -> None:
    host = await start_host(
        acme_audit_config(), plugins=[("policy", Policy()), ("first", Audit()), ("second", Audit())]
    )
    assert host.resolve("audit").plugin == "first"
    assert "first registered wins" in host.resolve("audit").reason


async def test_choice_is_cached_until_the_plugin_set_changes(start_host: HostFactory) -> None:
    slow = Audit("acme", 50)
    host = await start_host(acme_audit_config(), plugins=[("policy", Policy()), ("slow", slow)])
    first = host.resolve("audit")
    for _ in range(3):
        await host.call("audit", "emit_turn_audit", event={})
    assert host.resolve("audit") is first
    assert slow.capability_calls == 1  # declared once at start, not per call
    faster = Audit("acme", 5)
    host.register("faster", faster)
    assert await host.call("audit", "emit_turn_audit", event={}) == "sync:acme:5"
    host.unregister("faster")
    assert host.resolve("audit").plugin == "slow"


async def test_missing_vendor_fails_start_up_naming_installed_vendors(start_host: HostFactory) -> None:
    with pytest.raises(PluginConfigError) as info:
        await start_host({"plugins": {"audit_vendor": "nosuch"}}, load_entry_points=True)
    message = str(info.value)
    assert "plugins.audit_vendor" in message
    assert "'nosuch'" in message
    assert "installed audit vendors: 'minichat'" in message


async def test_missing_storage_vendor_names_the_provider(start_host: HostFactory) -> None:
    raw = {"providers": {"local": {"kind": "local", "storage": "s3"}}}
    with pytest.raises(PluginConfigError) as info:
        await start_host(raw, load_entry_points=True)
    message = str(info.value)
    assert "providers.local.storage" in message
    assert "installed storage vendors: 'azure', 'local', 'openai'" in message


async def test_storage_resolves_per_provider(start_host: HostFactory) -> None:
    raw = {
        "providers": {
            "local": {"kind": "local", "storage": "local"},
            "oai": {"kind": "openai_responses", "base_url": "http://127.0.0.1:9", "storage": "openai"},
            "chat": {"kind": "openai_chat", "storage": ""},
        }
    }
    host = await start_host(raw, load_entry_points=True)
    storage = {e["provider_id"]: e for e in host.explain() if e["capability"] == "storage"}
    assert storage["local"]["plugin"] == "local_storage"
    assert storage["oai"]["plugin"] == "storage_openai"
    assert storage["chat"]["plugin"] is None
    assert "not configured" in storage["chat"]["reason"]
    assert host.has("storage", "oai") and not host.has("storage", "chat")
    with pytest.raises(PluginConfigError, match="unknown provider 'nope'"):
        host.resolve("storage", "nope")


async def test_empty_audit_vendor_means_no_audit(start_host: HostFactory) -> None:
    host = await start_host(NO_AUDIT, plugins=[("policy", Policy())])
    assert not host.has("audit")
    with pytest.raises(PluginConfigError, match="not configured"):
        await host.call("audit", "emit_turn_audit", event={})


# --- settings --------------------------------------------------------------------------------------
class Knobs(msgspec.Struct, kw_only=True):  # tolerant struct: the host still refuses unknown keys
    level: int = 1
    inner: Inner | None = None


class Inner(msgspec.Struct):
    depth: int = 0


class Configurable(Policy):
    def __init__(self) -> None:
        super().__init__()
        self.configured: list[dict[str, Any]] = []

    @hookimpl
    def minichat_plugin_settings(self) -> PluginSettings:
        return PluginSettings(section="knobs", struct=Knobs)

    @hookimpl
    def minichat_configure(self, settings: Knobs, config: Any, data_dir: Path) -> None:
        self.configured.append({"settings": settings, "config": config, "data_dir": data_dir})


async def test_settings_are_decoded_and_passed_to_configure(start_host: HostFactory, tmp_path: Path) -> None:
    plugin = Configurable()
    raw = {"plugins": {"audit_vendor": "", "settings": {"knobs": {"level": "3", "inner": {"depth": 2}}}}}
    host = await start_host(raw, plugins=[("knobs", plugin)])
    [call] = plugin.configured
    assert call["settings"] == Knobs(level=3, inner=Inner(depth=2))
    assert call["data_dir"] == make_config(tmp_path).data_dir()
    assert call["config"].plugins.audit_vendor == ""
    assert next(p for p in host.plugins() if p["name"] == "knobs")["settings_section"] == "knobs"


async def test_missing_section_gives_defaults(start_host: HostFactory) -> None:
    plugin = Configurable()
    await start_host(NO_AUDIT, plugins=[("knobs", plugin)])
    assert plugin.configured[0]["settings"] == Knobs()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"level": "high"}, "Expected `int`, got `str` - at `$.level`"),
        ({"colour": "red"}, "unknown field `colour` - at `$`"),
        ({"inner": {"depth": 1, "width": 2}}, "unknown field `width` - at `$.inner`"),
    ],
)
async def test_bad_settings_fail_start_up_with_the_path(
    start_host: HostFactory, section: dict[str, Any], expected: str
) -> None:
    plugin = Configurable()
    with pytest.raises(PluginConfigError) as info:
        await start_host(
            {"plugins": {"audit_vendor": "", "settings": {"knobs": section}}}, plugins=[("k", plugin)]
        )
    assert "plugins.settings.knobs" in str(info.value)
    assert expected in str(info.value)
    assert not plugin.configured


async def test_bundled_plugin_settings_are_validated(start_host: HostFactory) -> None:
    with pytest.raises(PluginConfigError) as info:
        await start_host(
            {"plugins": {"settings": {"audit_log": {"rotate_bytes": "big"}}}}, load_entry_points=True
        )
    assert "plugins.settings.audit_log" in str(info.value)
    assert "$.rotate_bytes" in str(info.value)


async def test_unclaimed_settings_section_is_an_error(start_host: HostFactory) -> None:
    with pytest.raises(PluginConfigError) as info:
        await start_host(
            {"plugins": {"audit_vendor": "", "settings": {"nosuch": {}}}}, plugins=[("p", Policy())]
        )
    assert "nosuch" in str(info.value)


async def test_configure_failure_names_the_plugin(start_host: HostFactory) -> None:
    class Failing(Policy):
        @hookimpl
        def minichat_configure(self) -> None:
            raise RuntimeError("disk on fire")

    with pytest.raises(
        PluginConfigError, match="plugin 'failing' failed to configure: RuntimeError: disk on fire"
    ):
        await start_host(NO_AUDIT, plugins=[("failing", Failing())])


# --- calls -----------------------------------------------------------------------------------------
async def test_async_impl_is_awaited_on_the_loop_and_sync_impl_runs_in_a_thread(
    start_host: HostFactory,
) -> None:
    audit = Audit()
    host = await start_host(acme_audit_config(), plugins=[("policy", Policy()), ("acme", audit)])
    loop_thread = threading.get_ident()
    assert await host.call("audit", "emit_turn_delete_audit", event={"n": 1}) == "async"
    assert await host.call("audit", "minichat_emit_turn_audit", event={"n": 2}) == "sync:acme:100"
    assert audit.threads[0] == loop_thread
    assert audit.threads[1] != loop_thread


async def test_blocking_sync_impl_does_not_freeze_the_event_loop(start_host: HostFactory) -> None:
    loop = asyncio.get_running_loop()
    entered, released = asyncio.Event(), threading.Event()

    class Blocking(Audit):
        @hookimpl
        def minichat_emit_turn_audit(self, event: Any) -> bool:
            loop.call_soon_threadsafe(entered.set)
            return released.wait(timeout=30)  # only the event loop can set it

    host = await start_host(acme_audit_config(), plugins=[("policy", Policy()), ("acme", Blocking())])
    call = asyncio.create_task(host.call("audit", "emit_turn_audit", event={}, timeout=60))
    async with asyncio.timeout(30):
        await entered.wait()  # the loop keeps running while the hook blocks its thread
    released.set()
    assert await call is True


async def test_only_accepted_kwargs_are_passed(start_host: HostFactory, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Storage:
        @hookimpl
        def minichat_capabilities(self) -> list[Capability]:
            return [Capability(capability="storage", vendor="mine")]

        @hookimpl
        async def minichat_storage_delete_file(self, provider_id: str, file_id: str) -> None:
            seen.update(provider_id=provider_id, file_id=file_id)

    raw = {"plugins": {"audit_vendor": ""}, "providers": {"p1": {"kind": "local", "storage": "mine"}}}
    host = await start_host(raw, plugins=[("policy", Policy()), ("mine", Storage())])
    await host.call("storage", "storage_delete_file", provider_id="p1", tenant_id="t", file_id="f")
    assert seen == {"provider_id": "p1", "file_id": "f"}
    with pytest.raises(TypeError, match="no argument"):
        await host.call(
            "storage", "storage_delete_file", provider_id="p1", tenant_id="t", file_id="f", bogus=1
        )
    with pytest.raises(TypeError, match="missing argument"):
        await host.call("storage", "storage_delete_file", provider_id="p1", tenant_id="t")
    with pytest.raises(ValueError, match="not a hook of the audit capability"):
        await host.call("audit", "storage_delete_file", file_id="f")
    with pytest.raises(ValueError, match="per provider"):
        await host.call("storage", "storage_delete_file", tenant_id="t", file_id="f")


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_timeout_raises_plugin_timeout(start_host: HostFactory, kind: str) -> None:
    release = threading.Event()

    class Slow(Audit):
        @hookimpl
        def minichat_emit_turn_audit(self, event: Any) -> None:
            release.wait(timeout=30)

        @hookimpl
        async def minichat_emit_turn_delete_audit(self, event: Any) -> None:
            await asyncio.sleep(30)

    host = await start_host(acme_audit_config(), plugins=[("policy", Policy()), ("slow", Slow())])
    hook = "emit_turn_delete_audit" if kind == "async" else "emit_turn_audit"
    try:
        with pytest.raises(PluginTimeout) as info:
            await host.call("audit", hook, event={}, timeout=0.05)
    finally:
        release.set()
    assert isinstance(info.value, TransientError)
    assert "'slow'" in str(info.value)


async def test_async_hooks_that_wait_finish_time_out_and_are_cancelled_like_any_coroutine(
    start_host: HostFactory,
) -> None:
    # An async hook's first step runs in place (no timer when it answers at once); one that waits goes on
    # under the timeout, and what the caller's task throws in reaches it.
    seen: list[str] = []
    gate = asyncio.Event()

    class Waiting(Audit):
        @hookimpl
        async def minichat_emit_turn_audit(self, event: Any) -> str:
            seen.append("first step")
            await asyncio.sleep(0)
            await asyncio.sleep(0.001)
            return f"done {event['n']}"

        @hookimpl
        async def minichat_emit_turn_delete_audit(self, event: Any) -> None:
            try:
                seen.append("waiting")
                await gate.wait()
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            finally:
                seen.append("cleaned up")

        @hookimpl
        async def minichat_emit_turn_edit_audit(self, event: Any) -> None:
            raise TimeoutError("the plugin's own timeout")

    host = await start_host(acme_audit_config(), plugins=[("policy", Policy()), ("w", Waiting())])
    assert await host.call("audit", "emit_turn_audit", event={"n": 1}) == "done 1"
    with pytest.raises(PluginTimeout):
        await host.call("audit", "emit_turn_delete_audit", event={}, timeout=0.02)
    assert seen[-3:] == ["waiting", "cancelled", "cleaned up"]
    call = asyncio.create_task(host.call("audit", "emit_turn_delete_audit", event={}, timeout=5))
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert seen[-3:] == ["waiting", "cancelled", "cleaned up"]
    # A TimeoutError the plugin raises itself is its error, not the host's timeout.
    with pytest.raises(TimeoutError, match="own timeout") as info:
        await host.call("audit", "emit_turn_edit_audit", event={})
    assert not isinstance(info.value, PluginTimeout)


async def test_default_timeout_comes_from_config(start_host: HostFactory) -> None:
    class Slow(Audit):
        @hookimpl
        async def minichat_emit_turn_delete_audit(self, event: Any) -> None:
            await asyncio.sleep(30)

    raw = {"plugins": {"audit_vendor": "acme", "hook_timeout_seconds": 0.05}}
    host = await start_host(raw, plugins=[("policy", Policy()), ("slow", Slow())])
    with pytest.raises(PluginTimeout):
        await host.call("audit", "emit_turn_delete_audit", event={})


@pytest.mark.parametrize("error", [TransientError("later"), PermanentError("never"), KeyError("odd")])
async def test_plugin_errors_pass_through_unchanged(start_host: HostFactory, error: Exception) -> None:
    class Raising(Audit):
        @hookimpl
        def minichat_emit_turn_audit(self, event: Any) -> None:
            raise error

    host = await start_host(acme_audit_config(), plugins=[("policy", Policy()), ("r", Raising())])
    with pytest.raises(type(error)) as info:
        await host.call("audit", "emit_turn_audit", event={})
    assert info.value is error


async def test_resolved_plugin_without_the_hook_is_a_permanent_error(start_host: HostFactory) -> None:
    host = await start_host(acme_audit_config(), plugins=[("policy", Policy()), ("acme", Audit())])
    with pytest.raises(
        PermanentError, match="plugin 'acme' does not implement hook minichat_emit_turn_edit_audit"
    ):
        await host.call("audit", "emit_turn_edit_audit", event={})


# --- runtime registration and shutdown -------------------------------------------------------------
async def test_register_after_start_needs_sync_set_up_or_add(start_host: HostFactory) -> None:
    class AsyncSetUp(Audit):
        @hookimpl
        async def minichat_configure(self) -> None:
            return None

    host = await start_host(NO_AUDIT, plugins=[("policy", Policy())])
    with pytest.raises(PluginConfigError, match=r"await host\.add"):
        host.register("late", AsyncSetUp())
    assert not host.is_registered("late")
    await host.add("late", AsyncSetUp())
    assert host.is_registered("late")


async def test_shutdown_hooks_run_once_sync_and_async(start_host: HostFactory) -> None:
    calls: list[str] = []

    class SyncDown(Policy):
        @hookimpl
        def minichat_shutdown(self) -> None:
            calls.append("sync")

    class AsyncDown(Audit):
        @hookimpl
        async def minichat_shutdown(self) -> None:
            calls.append("async")

    host = await start_host(acme_audit_config(), plugins=[("policy", SyncDown()), ("acme", AsyncDown())])
    await host.aclose()
    await host.aclose()
    assert calls == ["async", "sync"]  # last registered first


async def test_failed_start_shuts_down_what_was_configured(start_host: HostFactory) -> None:
    calls: list[str] = []

    class Down(Policy):
        @hookimpl
        def minichat_shutdown(self) -> None:
            calls.append("down")

    with pytest.raises(PluginConfigError):
        await start_host({"plugins": {"audit_vendor": "nosuch"}}, plugins=[("policy", Down())])
    assert calls == ["down"]


def test_every_hookspec_belongs_to_a_capability_or_the_lifecycle() -> None:
    from minichat_host.plugins import hookspecs

    names = {n for n in dir(hookspecs) if n.startswith("minichat_")}
    mapped = set(LIFECYCLE_HOOKS).union(*CAPABILITY_HOOKS.values())
    assert names == mapped
