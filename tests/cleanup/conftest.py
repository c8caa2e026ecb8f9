"""Fixtures of the clean-up tests: the composed stack (tests/attachments/harness.py) on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path
