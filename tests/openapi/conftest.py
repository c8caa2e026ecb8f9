"""Fixtures for the OpenAPI tests: the embedded-default config (local provider, bundled demo catalog, dev
identity) on a migrated SQLite database, the app running on a loopback port, and the documents."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from minichat_host.app import create_app
from minichat_host.config import Config, parse_config
from openapi.server import LiveServer, live_server

PREFIX = "/mini-chat"
# A copy of shared/reference/openapi.json (the original's contract), so the suite runs from the repo alone.
REFERENCE_OPENAPI = Path(__file__).with_name("reference_openapi.json")


def embedded_config(db_url: str, data_dir: Path, **sections: Any) -> Config:
    """The embedded defaults, on the given database and data directory."""
    raw: dict[str, Any] = {
        "server": {"data_dir": str(data_dir)},
        "database": {"url": db_url, "migrate_on_start": False},
        "orphan_watchdog": {"enabled": False},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_config(raw, env={})


@pytest.fixture
def app_config(sqlite_migrated_db_url: str, tmp_path: Path) -> Config:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return embedded_config(sqlite_migrated_db_url, data_dir)


@pytest.fixture
def server(app_config: Config) -> Iterator[LiveServer]:
    with live_server(create_app(app_config)) as running:
        yield running


@pytest.fixture(scope="session")
def reference_document() -> dict[str, Any]:
    """The original's published contract."""
    document: dict[str, Any] = json.loads(REFERENCE_OPENAPI.read_text(encoding="utf-8"))
    return document
