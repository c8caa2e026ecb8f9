"""minichat_host.testing: a plugin registered for one test receives calls and is gone afterwards."""

from __future__ import annotations

from typing import Any

import pytest

from minichat_host import hookimpl
from minichat_host.plugins.manager import PluginHost
from minichat_host.plugins.types import Capability
from minichat_host.testing import aregister_plugin, plugin_host_fixture, register_plugin


class Policy:
    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability="model_policy", vendor="minichat")]


class Spy:
    """Audit for vendor `acme`; the throw-away one outranks the fixture's baseline (priority 1 < 100)."""

    def __init__(self, priority: int = 1) -> None:
        self.priority = priority
        self.events: list[Any] = []

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability="audit", vendor="acme", priority=self.priority)]

    @hookimpl
    async def minichat_emit_turn_audit(self, event: Any) -> str:
        self.events.append(event)
        return "spy" if self.priority == 1 else "baseline"


class Baseline(Spy):
    def __init__(self) -> None:
        super().__init__(priority=100)


plugin_host = plugin_host_fixture(
    ("policy", Policy), ("baseline", Baseline), config={"plugins": {"audit_vendor": "acme"}}
)
bundled_host = plugin_host_fixture(load_entry_points=True, name="bundled_host")


async def test_throwaway_plugin_receives_a_call_and_is_gone_afterwards(plugin_host: PluginHost) -> None:
    spy = Spy()
    with register_plugin(plugin_host, spy, name="spy") as name:
        assert name == "spy"
        assert plugin_host.resolve("audit").plugin == "spy"
        assert await plugin_host.call("audit", "emit_turn_audit", event={"n": 1}) == "spy"
    assert spy.events == [{"n": 1}]
    assert not plugin_host.is_registered("spy")
    assert plugin_host.resolve("audit").plugin == "baseline"
    assert await plugin_host.call("audit", "emit_turn_audit", event={"n": 2}) == "baseline"
    assert spy.events == [{"n": 1}]


async def test_the_next_test_does_not_see_the_throwaway_plugin(plugin_host: PluginHost) -> None:
    assert [p["name"] for p in plugin_host.plugins()] == ["local_storage", "policy", "baseline"]


async def test_plugin_is_unregistered_even_when_the_block_fails(plugin_host: PluginHost) -> None:
    with pytest.raises(RuntimeError), register_plugin(plugin_host, Spy()) as name:
        raise RuntimeError("test failed inside the block")
    assert not plugin_host.is_registered(name)


async def test_async_variant(plugin_host: PluginHost) -> None:
    spy = Spy()
    async with aregister_plugin(plugin_host, spy) as name:
        await plugin_host.call("audit", "emit_turn_audit", event={})
    assert spy.events == [{}]
    assert not plugin_host.is_registered(name)


async def test_fixture_with_bundled_plugins(bundled_host: PluginHost) -> None:
    assert bundled_host.resolve("model_policy").plugin == "policy_static"
    assert bundled_host.resolve("audit").plugin == "audit_log"
