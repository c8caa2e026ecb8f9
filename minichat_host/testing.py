"""pytest helpers for plugin authors (and the host's own tests).

- `register_plugin(host, plugin, name=None)`: a context manager that registers a plugin on a running
  `PluginHost` for the `with` block and unregisters it afterwards (even when the block fails).
  `aregister_plugin` is the `async with` twin for plugins whose set-up hooks are `async def`.
- `plugin_host_fixture(...)`: builds a pytest fixture yielding a started `PluginHost` whose data directory
  is the test's `tmp_path`; put it in a conftest.py:

      from minichat_host.testing import plugin_host_fixture
      from my_plugin import MyPlugin

      plugin_host = plugin_host_fixture(
          ("my_plugin", MyPlugin),                       # a factory: each test gets a fresh instance
          config={"plugins": {"audit_vendor": "acme", "settings": {"my_plugin": {"level": 3}}}},
      )

      async def test_emits(plugin_host):
          await plugin_host.call("audit", "emit_turn_audit", event=...)
- `make_config(data_dir, raw=None)`: a `Config` from a mapping with `server.data_dir` set.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest_asyncio

from minichat_host.config import Config, parse_config
from minichat_host.plugins.manager import PluginHost

PluginSpec = tuple[str, object]


def _default_name(plugin: object) -> str:
    return f"{type(plugin).__name__}-{id(plugin):x}"


@contextlib.contextmanager
def register_plugin(host: PluginHost, plugin: object, name: str | None = None) -> Iterator[str]:
    """Register `plugin` on `host` for the duration of the block; yields the name it was registered as."""
    registered = host.register(name or _default_name(plugin), plugin)
    try:
        yield registered
    finally:
        if host.is_registered(registered):
            host.unregister(registered)


@contextlib.asynccontextmanager
async def aregister_plugin(host: PluginHost, plugin: object, name: str | None = None) -> AsyncIterator[str]:
    """Like `register_plugin`, awaiting async set-up hooks (`minichat_configure` may be `async def`)."""
    registered = await host.add(name or _default_name(plugin), plugin)
    try:
        yield registered
    finally:
        if host.is_registered(registered):
            host.unregister(registered)


def make_config(data_dir: str | Path, raw: Mapping[str, Any] | None = None) -> Config:
    """A Config decoded from `raw` (a parsed-YAML mapping) with `server.data_dir` defaulting to `data_dir`."""
    mapping: dict[str, Any] = copy.deepcopy(dict(raw or {}))
    server = mapping.setdefault("server", {})
    server.setdefault("data_dir", str(data_dir))
    return parse_config(mapping, env={})


def plugin_host_fixture(
    *plugins: PluginSpec,
    config: Mapping[str, Any] | None = None,
    load_entry_points: bool = False,
    name: str | None = None,
) -> Any:
    """A pytest fixture yielding a started PluginHost with `plugins` registered; closed after the test.

    Each plugin is `(name, object)` or `(name, class)`: a class is instantiated per test so plugin state
    never leaks between tests. `config` is a parsed-YAML
    mapping (data_dir defaults to the test's tmp_path). Entry-point plugins are not loaded unless
    `load_entry_points=True`, so a test sees exactly the plugins it names (plus the built-ins).
    """

    async def fixture(tmp_path: Path) -> AsyncIterator[PluginHost]:
        extra = [(plugin_name, _instantiate(obj)) for plugin_name, obj in plugins]
        host = PluginHost(
            make_config(tmp_path, config), load_entry_points=load_entry_points, extra_plugins=extra
        )
        await host.start()
        try:
            yield host
        finally:
            await host.aclose()

    decorated: Any = pytest_asyncio.fixture(fixture, name=name) if name else pytest_asyncio.fixture(fixture)
    return decorated


def _instantiate(obj: object) -> object:
    return obj() if isinstance(obj, type) else obj


__all__ = ["aregister_plugin", "make_config", "plugin_host_fixture", "register_plugin"]
