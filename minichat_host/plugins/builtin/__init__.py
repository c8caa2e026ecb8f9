"""Built-in default plugins, registered by the host through the same hooks vendor plugins use.

Each entry is `(plugin name, factory)`; the host calls the factory once per `PluginHost`, so plugin state
(paths, locks) is never shared between hosts.
"""

from __future__ import annotations

from collections.abc import Callable

from minichat_host.plugins.builtin.local_storage import LocalStoragePlugin

BUILTIN_PLUGINS: tuple[tuple[str, Callable[[], object]], ...] = (("local_storage", LocalStoragePlugin),)

__all__ = ["BUILTIN_PLUGINS", "LocalStoragePlugin"]
