"""Fixtures for the plugin host tests: a clean plugin environment and a host factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from minichat_host import constants
from minichat_host.plugins.manager import PluginHost
from minichat_host.testing import make_config

HostFactory = Callable[..., Awaitable[PluginHost]]


@pytest.fixture(autouse=True)
def _plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide themselves whether plugin loading is restricted or traced."""
    monkeypatch.delenv(constants.ENV_LOAD_PLUGINS, raising=False)
    monkeypatch.delenv(constants.ENV_TRACE_PLUGINS, raising=False)


@pytest.fixture
async def start_host(tmp_path: Path) -> AsyncIterator[HostFactory]:
    """`await start_host(raw_config, plugins=[...])`: a started host, closed after the test."""
    hosts: list[PluginHost] = []

    async def factory(
        raw: dict[str, Any] | None = None,
        *,
        plugins: Sequence[tuple[str, object]] = (),
        load_entry_points: bool = False,
        start: bool = True,
    ) -> PluginHost:
        host = PluginHost(
            make_config(tmp_path, raw), load_entry_points=load_entry_points, extra_plugins=plugins
        )
        hosts.append(host)
        if start:
            await host.start()
        return host

    yield factory
    for host in hosts:
        await host.aclose()
