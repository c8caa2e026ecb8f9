"""Fixtures for the chat API tests: app clients over a migrated database (SQLite and PostgreSQL).

`client` is the dev identity; `await make_client(user_id=..., tenant_id=...)` builds a second app with
another identity (`auth.dev_*_id` overridden) on the same database, for isolation tests.

The policy comes from the bundled `policy_static` plugin (entry point), configured with
`helpers.TEST_CATALOG`: ids with dots and a slash, a disabled entry, a premium default.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from api.helpers import DEV_TENANT, DEV_USER, TEST_CATALOG, ClientFactory, ClientT, ConfigFactory
from minichat_host.app import create_app
from minichat_host.config import Config, parse_config


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_config(migrated_db_url: str, data_dir: Path) -> ConfigFactory:
    """`make_config(catalog=..., auth=..., **sections)`: a Config on the test database and data dir."""

    def make(*, catalog: list[dict[str, Any]] | None = TEST_CATALOG, **sections: Any) -> Config:
        raw: dict[str, Any] = {
            "server": {"data_dir": str(data_dir)},
            "database": {"url": migrated_db_url, "migrate_on_start": False, "pool_max_size": 4},
        }
        if catalog is not None:
            raw["plugins"] = {"settings": {"policy_static": {"model_catalog": catalog}}}
        return parse_config(_merge(raw, sections), env={})

    return make


@pytest.fixture
def make_client(make_config: ConfigFactory, aiohttp_client: Any) -> ClientFactory:
    """`await make_client(tenant_id=..., user_id=..., extra_plugins=..., **config sections)`."""

    async def make(
        *,
        tenant_id: uuid.UUID = DEV_TENANT,
        user_id: uuid.UUID = DEV_USER,
        extra_plugins: Sequence[tuple[str, object]] = (),
        **sections: Any,
    ) -> ClientT:
        auth = {"dev_tenant_id": str(tenant_id), "dev_user_id": str(user_id)}
        config = make_config(**_merge({"auth": auth}, sections))
        client: ClientT = await aiohttp_client(create_app(config, extra_plugins=extra_plugins))
        return client

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> ClientT:
    return await make_client()
