"""`GET /models` and `GET /models/{id}` from the resolved policy plugin, the catalog rules, and what the
API answers when the policy plugin fails, hangs or answers nonsense (503, nothing written)."""

from __future__ import annotations

import asyncio
from typing import Any

import databases
import pytest

from api.helpers import PREFIX, ClientFactory, ClientT, expect_problem, table_snapshot
from minichat_host import hookimpl
from minichat_host.domain.catalog import default_model, enabled_models, find_enabled, to_wire_model
from minichat_host.plugins.errors import PermanentError, TransientError
from minichat_host.plugins.types import Capability, ModelCatalogEntry, ModelPreference, PolicySnapshot

MODEL_KEYS = {
    "model_id",
    "display_name",
    "tier",
    "multiplier_display",
    "multimodal_capabilities",
    "context_window",
}


async def test_list_models_enabled_in_catalog_order(client: ClientT) -> None:
    response = await client.get(f"{PREFIX}/models")
    assert response.status == 200
    body = await response.json()
    assert set(body) == {"items"}
    assert [item["model_id"] for item in body["items"]] == ["gpt-4.1", "gpt-4.1-mini", "org/model-2.5"]
    premium, mini, org = body["items"]
    assert premium == {
        "model_id": "gpt-4.1",
        "display_name": "GPT-4.1",
        "tier": "premium",
        "multiplier_display": "3x",
        "description": "Premium test model",
        "multimodal_capabilities": ["VISION_INPUT"],
        "context_window": 128000,
    }
    # No description → the member is omitted; nothing internal (provider, multipliers, is_default) leaks.
    assert set(mini) == MODEL_KEYS
    assert mini["tier"] == "standard" and mini["context_window"] == 64000
    assert mini["multimodal_capabilities"] == []
    assert set(org) == MODEL_KEYS


@pytest.mark.parametrize("model_id", ["gpt-4.1", "gpt-4.1-mini", "org/model-2.5"])
async def test_get_model_by_id_with_dots_and_slashes(client: ClientT, model_id: str) -> None:
    listed = (await (await client.get(f"{PREFIX}/models")).json())["items"]
    response = await client.get(f"{PREFIX}/models/{model_id}")
    assert response.status == 200
    assert await response.json() == next(item for item in listed if item["model_id"] == model_id)


@pytest.mark.parametrize("model_id", ["retired-0.9", "gpt-4.2", "gpt-4.1.", "GPT-4.1", "x" * 300])
async def test_unknown_or_disabled_model_is_404(client: ClientT, model_id: str) -> None:
    problem = await expect_problem(await client.get(f"{PREFIX}/models/{model_id}"), 404, "model_not_found")
    assert problem["title"] == "model_not_found"


async def test_models_follow_the_catalog_configuration(make_client: ClientFactory) -> None:
    catalog = [{"id": "only.one", "provider_model_id": "m", "display_name": "Only", "tier": "premium"}]
    client = await make_client(catalog=catalog)
    items = (await (await client.get(f"{PREFIX}/models")).json())["items"]
    assert [item["model_id"] for item in items] == ["only.one"]


# --- catalog rules -----------------------------------------------------------------------------------
def entry(model_id: str, *, enabled: bool = True, default: bool = False) -> ModelCatalogEntry:
    return ModelCatalogEntry(
        id=model_id,
        provider_model_id="m",
        display_name=model_id,
        enabled=enabled,
        preference=ModelPreference(is_default=default) if default else None,
    )


def snapshot(*entries: ModelCatalogEntry) -> PolicySnapshot:
    return PolicySnapshot(user_id="u", policy_version=1, model_catalog=list(entries))


def test_default_model_rules() -> None:
    assert default_model(snapshot()) is None
    assert default_model(snapshot(entry("a", enabled=False))) is None
    assert default_model(snapshot(entry("a"), entry("b", default=True))).id == "b"  # type: ignore[union-attr]
    # A disabled default does not count: the first enabled entry is used.
    chosen = default_model(snapshot(entry("a", enabled=False, default=True), entry("b"), entry("c")))
    assert chosen is not None and chosen.id == "b"


def test_find_enabled_and_wire_model() -> None:
    catalog = snapshot(entry("a"), entry("b", enabled=False))
    assert find_enabled(catalog, "a") is not None
    assert find_enabled(catalog, "b") is None
    assert find_enabled(catalog, "c") is None
    assert [e.id for e in enabled_models(catalog)] == ["a"]
    wire = to_wire_model(entry("a"))
    assert wire.description is None and wire.model_id == "a"


# --- a failing policy plugin -------------------------------------------------------------------------
class BrokenPolicy:
    """A model_policy plugin for vendor `broken` that fails in the configured way."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability="model_policy", vendor="broken", priority=1)]

    @hookimpl
    async def minichat_get_current_policy_version(self) -> Any:
        if self.mode == "transient":
            raise TransientError("policy service down")
        if self.mode == "permanent":
            raise PermanentError("policy service refuses")
        if self.mode == "crash":
            raise ZeroDivisionError("bug in the plugin")
        if self.mode == "hang":
            await asyncio.sleep(60)
        if self.mode == "bad_version":
            return "one"
        return 1

    @hookimpl
    async def minichat_get_policy_snapshot(self, user_id: str, policy_version: int) -> Any:
        return {"user_id": user_id, "policy_version": policy_version, "model_catalog": "not a list"}

    @hookimpl
    async def minichat_get_user_limits(self, user_id: str, policy_version: int) -> Any:
        return {"user_id": user_id}


@pytest.mark.parametrize("mode", ["transient", "permanent", "crash", "hang", "bad_version", "bad_snapshot"])
async def test_a_failing_policy_plugin_gives_503_and_writes_nothing(
    make_client: ClientFactory, database: databases.Database, mode: str
) -> None:
    client = await make_client(
        extra_plugins=[("broken_policy", BrokenPolicy(mode))],
        plugins={"model_policy_vendor": "broken", "hook_timeout_seconds": 0.2},
    )
    before = await table_snapshot(database)
    for response in (
        await client.get(f"{PREFIX}/models"),
        await client.get(f"{PREFIX}/models/gpt-4.1"),
        await client.post(f"{PREFIX}/chats", json={"title": "x"}),
        await client.get(f"{PREFIX}/quota/status"),
    ):
        await expect_problem(response, 503, "service_unavailable")
    assert await table_snapshot(database) == before
