"""Fixtures of the fault suite: fake provider processes, host processes (SIGKILLed at teardown if a test
left one running) and a `databases` connection for reading the books."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import databases
import pytest

from faults.procs import FakeProviderProcess, HostProcess
from minichat_host.db.engine import connect_database

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
