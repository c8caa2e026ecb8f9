"""docs/api.md is generated from the served OpenAPI document and must not go stale."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_api_reference_page_is_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location(
        "api_reference", REPO / "docs" / "_tools" / "api_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.reference_markdown()
    actual = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    assert actual == expected, "docs/api.md is stale; run: .venv/bin/python docs/_tools/api_reference.py"
