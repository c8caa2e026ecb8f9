"""storage_azure is found through its entry point and serves storage for providers with `storage: azure`."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from minichat_storage_azure import StorageAzurePlugin, StorageAzureSettings

from minichat_host import constants
from minichat_host.plugins.errors import PluginConfigError
from minichat_host.plugins.manager import PluginHost
from minichat_host.testing import make_config


def azure_config(api_version: str) -> dict[str, Any]:
    provider = {
        "kind": "openai_responses",
        "base_url": "http://127.0.0.1:9",
        "auth": "api-key",
        "storage": "azure",
    }
    if api_version:
        provider["api_version"] = api_version
    return {"providers": {"local": {"kind": "local"}, "az": provider}, "plugins": {"audit_vendor": ""}}


def test_entry_point_is_installed() -> None:
    [entry] = [e for e in metadata.entry_points(group="minichat") if e.name == "storage_azure"]
    assert entry.load() is StorageAzurePlugin
    assert entry.dist is not None and entry.dist.name == "minichat-storage-azure"


async def test_resolves_for_azure_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "policy_static,storage_azure")
    async with PluginHost(make_config(tmp_path, azure_config("2025-03-01-preview"))) as host:
        resolution = host.resolve("storage", "az")
        assert (resolution.plugin, resolution.vendor, resolution.priority) == ("storage_azure", "azure", 100)
        assert host.resolve("storage", "local").plugin == "local_storage"


async def test_azure_storage_without_api_version_fails_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "policy_static,storage_azure")
    with pytest.raises(PluginConfigError, match=r"provider.*az.*no api_version"):
        await PluginHost(make_config(tmp_path, azure_config(""))).start()


def test_default_settings() -> None:
    settings = StorageAzureSettings()
    assert (settings.vendor, settings.priority, settings.purpose) == ("azure", 100, "assistants")
