"""Fixtures for the outbox tests: an Outbox factory on the shared `database` fixture that always stops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import databases
import pytest
from prometheus_client import CollectorRegistry

from minichat_host.config import OutboxConfig
from minichat_host.outbox import Outbox
from minichat_host.outbox.metrics import OutboxMetrics

from .helpers import fast_config


@dataclass
class OutboxFactory:
    database: databases.Database
    dialect: str
    created: list[Outbox] = field(default_factory=list)

    def __call__(self, config: OutboxConfig | None = None, **kwargs: Any) -> Outbox:
        kwargs.setdefault("metrics", OutboxMetrics(CollectorRegistry()))
        outbox = Outbox(self.database, config or fast_config(), dialect=self.dialect, **kwargs)
        self.created.append(outbox)
        return outbox


@pytest.fixture
async def make_outbox(database: databases.Database, engine_name: str) -> AsyncIterator[OutboxFactory]:
    factory = OutboxFactory(database, engine_name)
    try:
        yield factory
    finally:
        for outbox in factory.created:
            await outbox.stop(grace_seconds=2.0)
