"""Fixtures of the fault suite: fake provider processes, host processes (SIGKILLed at teardown if a test
left one running), a `databases` connection for reading the books, and in-process apps built like the
turn tests' (tests/turns/conftest.py: `Harness`, `turn_config`, the `Recorder` plugin)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import databases
import pytest
from fakes.openai_server import FakeOpenAI
from turns.conftest import Harness, turn_config
from turns.recorder import Recorder

from faults.procs import FakeProviderProcess, HostProcess, free_port
from minichat_host.app import PLUGINS_KEY, create_app
from minichat_host.db.engine import connect_database
from minichat_host.testing import register_plugin

HostFactory = Callable[..., HostProcess]


@pytest.fixture(scope="module")
def slow_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake OpenAI server whose replies take about ten seconds (400 tokens, 25 ms apart)."""
    fake = FakeProviderProcess(tmp_path_factory.mktemp("fake-slow") / "fake.log", tokens=400, token_gap_ms=25)
    try:
        yield fake.start()
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def medium_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake OpenAI server whose replies take about a second (50 tokens, 20 ms apart)."""
    fake = FakeProviderProcess(
        tmp_path_factory.mktemp("fake-medium") / "fake.log", tokens=50, token_gap_ms=20
    )
    try:
        yield fake.start()
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def fast_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake OpenAI server that answers at once (eight tokens)."""
    fake = FakeProviderProcess(tmp_path_factory.mktemp("fake-fast") / "fake.log", tokens=8)
    try:
        yield fake.start()
    finally:
        fake.stop()


@pytest.fixture
def make_host(tmp_path: Path) -> Iterator[HostFactory]:
    """`make_host(config, name="host")`: a HostProcess in the test's directory (not started)."""
    hosts: list[HostProcess] = []

    def make(config: dict[str, Any], name: str = "host") -> HostProcess:
        host = HostProcess(config, tmp_path, name)
        hosts.append(host)
        return host

    yield make
    for host in hosts:
        host.kill()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Any]]:
    """`await connect(url)`: a `databases` connection closed at teardown."""
    opened: list[databases.Database] = []

    async def open_database(url: str) -> databases.Database:
        database = await connect_database(url, max_size=2)
        opened.append(database)
        return database

    yield open_database
    for database in opened:
        await database.disconnect()


# --- in-process apps for provider and plugin faults ---------------------------------------------------
@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting is refused."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
async def make_app(
    migrated_db_url: str, tmp_path: Path, fake_openai: FakeOpenAI, aiohttp_client: Any
) -> AsyncIterator[Callable[..., Any]]:
    """`await make_app(recorder, **config sections)`: an app on the test database with the fake OpenAI
    server as provider `fake` (see tests/turns/conftest.py `turn_config`) and `recorder` registered.

    The database fixture comes before `aiohttp_client`, so the app is stopped before the database is
    dropped."""
    contexts: list[Any] = []

    async def make(recorder: Recorder, **sections: Any) -> Harness:
        data_dir = tmp_path / f"data-{len(contexts)}"
        data_dir.mkdir()
        config = turn_config(migrated_db_url, data_dir, fake_openai.base_url, **sections)
        client = await aiohttp_client(create_app(config))
        context = register_plugin(client.server.app[PLUGINS_KEY], recorder, name=f"recorder-{len(contexts)}")
        context.__enter__()
        contexts.append(context)
        return Harness(client, recorder, fake_openai)

    yield make
    for context in reversed(contexts):
        context.__exit__(None, None, None)
