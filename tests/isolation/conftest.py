"""Fixtures of the isolation suite: one app (JWT HS256 auth) on a migrated database of each engine, served
over real HTTP on loopback, the four identities, and A's world built through the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import databases
import pytest

from isolation.world import (
    GATEWAY_SECRET,
    JWT_SECRET,
    Caller,
    ClientT,
    Identity,
    OwnerWorld,
    build_owner_world,
    identities,
)
from minichat_host.app import DATABASE_KEY, create_app
from minichat_host.config import parse_config


def isolation_config(db_url: str, data_dir: Path, auth: dict[str, Any]) -> Any:
    return parse_config(
        {
            "server": {"data_dir": str(data_dir)},
            "database": {"url": db_url, "migrate_on_start": False, "pool_max_size": 6},
            "auth": auth,
            # The local provider streams quickly; pings would only add frames.
            "streaming": {"sse_ping_interval_seconds": 5},
        },
        env={},
    )


@pytest.fixture
def people() -> dict[str, Identity]:
    return identities()


@pytest.fixture
async def app_client(migrated_db_url: str, tmp_path: Path, aiohttp_client: Any) -> ClientT:
    # `migrated_db_url` comes first so it is set up first and torn down last: the app (closed by
    # `aiohttp_client`'s teardown) must stop before the test database is dropped under it.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    auth = {"mode": "jwt", "jwt": {"algorithms": ["HS256"], "secret": JWT_SECRET}}
    client: ClientT = await aiohttp_client(create_app(isolation_config(migrated_db_url, data_dir, auth)))
    return client


@pytest.fixture
def app_db(app_client: ClientT) -> databases.Database:
    """The app's own connection to the test database (for row-level checks)."""
    app: Any = app_client.app
    db: databases.Database = app[DATABASE_KEY]
    return db


@pytest.fixture
def callers(app_client: ClientT, people: dict[str, Identity]) -> dict[str, Caller]:
    return {name: Caller(app_client, who) for name, who in people.items()}


@pytest.fixture
async def world(callers: dict[str, Caller], app_db: databases.Database) -> OwnerWorld:
    return await build_owner_world(callers["A"], app_db)


@pytest.fixture
async def gateway_client(migrated_db_url: str, tmp_path: Path, aiohttp_client: Any) -> ClientT:
    """The same service behind a gateway: identity from trusted headers, accepted only with the secret."""
    data_dir = tmp_path / "gateway-data"
    data_dir.mkdir()
    auth = {"mode": "trusted_headers", "trusted_headers": {"secret": GATEWAY_SECRET}}
    client: ClientT = await aiohttp_client(create_app(isolation_config(migrated_db_url, data_dir, auth)))
    return client
