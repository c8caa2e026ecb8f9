"""docs/plugins.md documents every hook: one `## <hook_name>` heading per hookspec."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from minichat_host.plugins import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def hook_names() -> list[str]:
    return sorted(
        name
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("minichat_")
    )


def test_every_hook_has_a_section() -> None:
    headings = set(re.findall(r"^## (minichat_\w+)\s*$", DOC.read_text(encoding="utf-8"), re.MULTILINE))
    missing = [name for name in hook_names() if name not in headings]
    assert not missing, f"docs/plugins.md lacks a `## <hook>` section for: {', '.join(missing)}"


def test_no_section_for_a_hook_that_does_not_exist() -> None:
    headings = set(re.findall(r"^## (minichat_\w+)\s*$", DOC.read_text(encoding="utf-8"), re.MULTILINE))
    assert headings <= set(hook_names())


def test_sections_name_arguments_returns_and_errors() -> None:
    text = DOC.read_text(encoding="utf-8")
    for name in hook_names():
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Arguments:**", "**Returns:**", "**Errors:**"):
            assert part in section, f"## {name} lacks {part}"
        for argument in inspect.signature(getattr(hookspecs, name)).parameters:
            assert f"`{argument}`" in section, f"## {name} does not describe argument `{argument}`"
