"""Fixtures of the attachment tests: a composed stack (see harness.py) on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from attachments.harness import ClientT, Stack, open_client, open_stack


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
async def stack(migrated_db_url: str, data_dir: Path) -> AsyncIterator[Stack]:
    async with open_stack(migrated_db_url, data_dir) as opened:
        yield opened


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[ClientT]:
    async with open_client(stack) as opened:
        yield opened
