"""storage_openai is found through its entry point and serves storage for providers with `storage: openai`."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from minichat_storage_openai import StorageOpenAIPlugin, StorageOpenAISettings

from minichat_host import constants
from minichat_host.plugins.errors import PluginConfigError
from minichat_host.plugins.manager import PluginHost
from minichat_host.testing import make_config

PROVIDERS = {
    "local": {"kind": "local", "storage": "local"},
    "oai": {"kind": "openai_responses", "base_url": "http://127.0.0.1:9", "storage": "openai"},
}


def test_entry_point_is_installed() -> None:
    [entry] = [e for e in metadata.entry_points(group="minichat") if e.name == "storage_openai"]
    assert entry.load() is StorageOpenAIPlugin
    assert entry.dist is not None and entry.dist.name == "minichat-storage-openai"


async def test_resolves_for_openai_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "policy_static,storage_openai")
    raw = {
        "providers": PROVIDERS,
        "plugins": {"audit_vendor": "", "settings": {"storage_openai": {"request_timeout_seconds": 5}}},
    }
    async with PluginHost(make_config(tmp_path, raw)) as host:
        resolution = host.resolve("storage", "oai")
        assert (resolution.plugin, resolution.vendor, resolution.priority) == (
            "storage_openai",
            "openai",
            100,
        )
        assert host.resolve("storage", "local").plugin == "local_storage"
        plugin = next(p for p in host.plugins() if p["name"] == "storage_openai")
        assert plugin["settings_section"] == "storage_openai"


async def test_settings_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "policy_static,storage_openai")
    raw = {"plugins": {"audit_vendor": "", "settings": {"storage_openai": {"request_timeout_seconds": 0}}}}
    with pytest.raises(
        PluginConfigError, match=r"plugins\.settings\.storage_openai.*request_timeout_seconds"
    ):
        await PluginHost(make_config(tmp_path, raw)).start()


def test_default_settings() -> None:
    settings = StorageOpenAISettings()
    assert (settings.vendor, settings.priority, settings.purpose) == ("openai", 100, "assistants")
