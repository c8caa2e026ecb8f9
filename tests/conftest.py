"""Shared fixtures: databases on SQLite and on a real PostgreSQL server started for the test run.

- `pg_server` (session): base URL of the PostgreSQL server (tests/pg.py; `MINICHAT_TEST_PG_URL` overrides).
  Started lazily, so a run that only touches SQLite never starts PostgreSQL.
- `engine_name`: "sqlite" / "postgresql"; any test using a fixture below that depends on it runs on both.
- `db_url`: a fresh, empty database. `migrated_db_url`: a fresh database at the head revision.
- `database`: a connected `databases.Database` on `migrated_db_url`.
- `sqlite_db_url` / `sqlite_migrated_db_url` / `pg_db_url`: single-engine variants (fresh databases).

Event loops: every async test runs on asyncio's loop; a test or module marked `both_loops` runs on uvloop as
well (`server.event_loop: uvloop`, whose transports are not asyncio's classes).
`MINICHAT_TEST_EVENT_LOOP=uvloop` runs every async test on uvloop alone (a whole-suite check of that loop,
not part of the test command).

A migrated database is a copy of a template migrated once per session (a file copy on SQLite,
`CREATE DATABASE ... TEMPLATE` on PostgreSQL): the same schema as running `aupgrade` in every test, faster.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import databases
import pg
import pytest
import uvloop

from minichat_host.db import migrate
from minichat_host.db.engine import connect_database

ENGINES = ("sqlite", "postgresql")
_ASYNCIO_ONLY: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
_BOTH_LOOPS: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {
    **_ASYNCIO_ONLY,
    "uvloop": uvloop.new_event_loop,
}


_UVLOOP_ONLY: Mapping[str, Callable[[], asyncio.AbstractEventLoop]] = {"uvloop": uvloop.new_event_loop}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if os.environ.get("MINICHAT_TEST_EVENT_LOOP") == "uvloop":
        return _UVLOOP_ONLY
    return _BOTH_LOOPS if item.get_closest_marker("both_loops") is not None else _ASYNCIO_ONLY


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path.resolve()}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    with pg.postgres_server() as url:
        yield url


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def sqlite_db_url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "minichat.db")


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate.upgrade(sqlite_url(path))
    return path


@pytest.fixture
def sqlite_migrated_db_url(tmp_path: Path, _sqlite_template: Path) -> str:
    target = tmp_path / "minichat.db"
    shutil.copyfile(_sqlite_template, target)
    return sqlite_url(target)


@pytest.fixture(scope="session")
def _pg_template(pg_server: str) -> Iterator[str]:
    name = pg.new_database_name("template")
    url = pg.create_database(pg_server, name)
    try:
        migrate.upgrade(url)
        yield name
    finally:
        pg.drop_database(pg_server, name)


def _pg_database(request: pytest.FixtureRequest, *, migrated: bool) -> Iterator[str]:
    base = request.getfixturevalue("pg_server")
    template = request.getfixturevalue("_pg_template") if migrated else None
    name = pg.new_database_name()
    url = pg.create_database(base, name, template=template)
    try:
        yield url
    finally:
        pg.drop_database(base, name)


@pytest.fixture
def pg_db_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from _pg_database(request, migrated=False)


@pytest.fixture
def db_url(engine_name: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if engine_name == "sqlite":
        yield request.getfixturevalue("sqlite_db_url")
        return
    yield from _pg_database(request, migrated=False)


@pytest.fixture
def migrated_db_url(engine_name: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if engine_name == "sqlite":
        yield request.getfixturevalue("sqlite_migrated_db_url")
        return
    yield from _pg_database(request, migrated=True)


@pytest.fixture
async def database(migrated_db_url: str) -> AsyncIterator[databases.Database]:
    db = await connect_database(migrated_db_url)
    try:
        yield db
    finally:
        await db.disconnect()
