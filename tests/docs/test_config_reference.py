"""docs/configuration.md is generated from the msgspec Config structs and must match them."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import yaml
from doc_snippets import DOCS


def test_the_configuration_page_is_up_to_date(config_reference: ModuleType) -> None:
    expected = config_reference.reference_markdown()
    current = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert current == expected, (
        "docs/configuration.md is out of date with minichat_host/config.py or docs/_tools/config_keys.yaml; "
        f"regenerate it with: {config_reference.REGENERATE}"
    )


def test_every_key_is_in_the_page(config_reference: ModuleType) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    keys = [key.path for section in config_reference.sections() for key in section.keys]
    assert len(keys) > 100
    for key in keys:
        assert f"| `{key}` |" in text, key


def test_an_undocumented_key_is_refused(
    config_reference: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes = yaml.safe_load(config_reference.NOTES_FILE.read_text(encoding="utf-8"))
    del notes["keys"]["server.port"]
    notes["keys"]["server.no_such_key"] = "stale"
    edited = tmp_path / "config_keys.yaml"
    edited.write_text(yaml.safe_dump(notes), encoding="utf-8")
    monkeypatch.setattr(config_reference, "NOTES_FILE", edited)
    with pytest.raises(config_reference.ConfigDocsError, match=r"server\.port.*server\.no_such_key"):
        config_reference.reference_markdown()


def test_check_mode_fails_on_a_stale_page(
    config_reference: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# an old page\n", encoding="utf-8")
    monkeypatch.setattr(config_reference, "OUTPUT", stale)
    assert config_reference.main(["--check"]) == 1
    assert config_reference.main([]) == 0  # rewrites it
    assert config_reference.main(["--check"]) == 0
