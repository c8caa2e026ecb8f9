"""Fixtures of the thread-summary tests: the composed stack with the summary queue registered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import databases
import pytest
from attachments.harness import FakeClock, Stack, open_stack

from minichat_host import constants
from minichat_host.config import Config
from minichat_host.domain.catalog import CatalogService
from minichat_host.domain.summaries import SummaryMetrics, ThreadSummaryHandler, register_summary_queue
from minichat_host.outbox import Outbox
from minichat_host.plugins.manager import PluginHost
from minichat_host.providers.base import ProviderRegistry


class SummaryStack:
    def __init__(self, stack: Stack, handler: ThreadSummaryHandler, providers: ProviderRegistry) -> None:
        self.stack = stack
        self.handler = handler
        self.providers = providers

    @property
    def usage(self) -> list[Any]:
        return self.stack.extra_queues[constants.QUEUE_USAGE]


@pytest.fixture
async def summary_stack(migrated_db_url: str, tmp_path: Path) -> AsyncIterator[SummaryStack]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    built: dict[str, Any] = {}

    def register(
        outbox: Outbox, plugins: PluginHost, database: databases.Database, config: Config, clock: FakeClock
    ) -> None:
        providers = ProviderRegistry(config.providers)
        built["providers"] = providers
        built["handler"] = register_summary_queue(
            outbox,
            database=database,
            catalog=CatalogService(plugins),
            providers=providers,
            config=config,
            metrics=SummaryMetrics(outbox.metrics.registry),
            clock=clock,
        )

    async with open_stack(
        migrated_db_url, data_dir, capture_queues=(constants.QUEUE_USAGE,), register=register
    ) as stack:
        try:
            yield SummaryStack(stack, built["handler"], built["providers"])
        finally:
            await built["providers"].aclose()
