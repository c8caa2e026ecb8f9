"""Fixtures for the docs tests: a migrated SQLite database with a few dead letters for the documented
`minichat outbox ...` commands, and the config reference generator loaded from docs/_tools."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

from minichat_host import constants
from minichat_host.config import OutboxConfig
from minichat_host.db import migrate
from minichat_host.db.engine import connect_database
from minichat_host.outbox import Delivery, Outbox
from minichat_host.plugins.errors import PermanentError

REPO = Path(__file__).resolve().parents[2]
GENERATOR = REPO / "docs" / "_tools" / "config_reference.py"
# Dead letters the docs' examples refer to: ids 1-3 in the audit queue, then id 4 in the usage queue.
DEAD_LETTERS = ((constants.QUEUE_AUDIT, 3), (constants.QUEUE_USAGE, 1))


async def _reject(delivery: Delivery) -> None:
    raise PermanentError("audit endpoint refused the event: 400 invalid tenant")


async def seed_dead_letters(url: str) -> None:
    """Register every queue and turn a few messages into dead letters, as a failing plugin would."""
    database = await connect_database(url)
    try:
        config = OutboxConfig()
        outbox = Outbox(database, config, dialect="sqlite")
        for queue in constants.ALL_QUEUES:
            outbox.register_queue(queue, _reject, partitions=config.num_partitions, timeout=5.0)
        await outbox.ensure_queues()
        for queue, count in DEAD_LETTERS:
            async with outbox.transaction() as tx:
                for number in range(count):
                    await tx.enqueue(queue, constants.DEV_TENANT_ID, {"example": number})
            await outbox.run_once()
    finally:
        await database.disconnect()


@pytest.fixture(scope="session")
def seeded_home_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("docs-home-template")
    url = f"sqlite+aiosqlite:///{home / 'minichat.db'}"
    migrate.upgrade(url)
    asyncio.run(seed_dead_letters(url))
    return home


@pytest.fixture
def seeded_home(seeded_home_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the seeded data directory for one test."""
    home = tmp_path / "home"
    shutil.copytree(seeded_home_template, home)
    return home


@pytest.fixture(scope="session")
def config_reference() -> ModuleType:
    """docs/_tools/config_reference.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("config_reference", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module
