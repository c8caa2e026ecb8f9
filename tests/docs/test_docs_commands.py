"""Every `minichat` command shown in the docs runs and exits as documented; every YAML block is valid config.

Commands run in-process through `minichat_host.cli.main` (fast, same code path as the console script),
page by page, in a fresh working directory with its own MINICHAT_HOME (a migrated SQLite database with
the dead letters the examples name) and a `minichat.yaml`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from doc_snippets import Block, blocks, commands, pages

from minichat_host import constants
from minichat_host.cli import main
from minichat_host.config import parse_config
from minichat_host.plugins.types import PluginSettings
from minichat_host.providers.base import validate_provider_config

PAGES_WITH_COMMANDS = [page for page in pages() if commands(page)]
YAML_BLOCKS = [block for page in pages() for block in blocks(page) if block.language == "yaml"]
CONFIG_IN_WORKDIR = (
    "# the config file the documented commands name (`--config minichat.yaml`)\nserver:\n  log_level: INFO\n"
)


def run_cli(argv: Sequence[str]) -> int:
    try:
        return main(list(argv))
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1


def test_the_docs_show_commands_and_config() -> None:
    """Guard against a parser change that silently finds nothing to check."""
    assert sum(len(commands(page)) for page in pages()) >= 30
    assert len(YAML_BLOCKS) >= 20


@pytest.mark.parametrize("page", PAGES_WITH_COMMANDS, ids=lambda page: page.name)
def test_documented_commands_succeed(
    page: Path,
    seeded_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "minichat.yaml").write_text(CONFIG_IN_WORKDIR, encoding="utf-8")
    monkeypatch.chdir(workdir)
    monkeypatch.setenv(constants.ENV_HOME, str(seeded_home))
    for variable in (constants.ENV_CONFIG, constants.ENV_LOAD_PLUGINS, constants.ENV_TRACE_PLUGINS):
        monkeypatch.delenv(variable, raising=False)
    for command in commands(page):
        with monkeypatch.context() as scoped:
            for key, value in command.env.items():
                scoped.setenv(key, value)
            code = run_cli(command.argv)
        out, err = capsys.readouterr()
        assert code == command.expected_exit, (
            f"{command.page}:{command.line}: `{command.source}` exited {code}, "
            f"expected {command.expected_exit}\n--- stdout\n{out}\n--- stderr\n{err}"
        )


class _AnyEnvironment(dict[str, str]):
    """Every `${VAR}` of a documented config is "set": the examples name variables a deployer provides."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return "example-value"


@functools.cache
def _bundled_settings_structs() -> dict[str, Any]:
    """Settings section -> msgspec struct of every installed plugin that declares one."""
    structs: dict[str, Any] = {}
    for entry_point in metadata.entry_points(group=constants.ENTRY_POINT_GROUP):
        loaded = entry_point.load()
        plugin = loaded() if isinstance(loaded, type) else loaded
        declare = getattr(plugin, "minichat_plugin_settings", None)
        declared = declare() if declare is not None else None
        if isinstance(declared, PluginSettings):
            structs[declared.section] = declared.struct
    return structs


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda block: f"{block.page}:{block.line}")
def test_yaml_blocks_are_valid_config(block: Block) -> None:
    raw = yaml.safe_load(block.text)
    assert isinstance(raw, dict), f"{block.page}:{block.line}: a YAML block must be a config mapping"
    config = parse_config(raw, env=_AnyEnvironment())
    for provider_id, provider in config.providers.items():
        validate_provider_config(provider_id, provider)
    structs = _bundled_settings_structs()
    for section, settings in config.plugins.settings.items():
        if section in structs:  # the bundled plugins' sections; a vendor's own are checked by the vendor
            try:
                msgspec.convert(settings, structs[section], strict=False)
            except msgspec.ValidationError as exc:
                pytest.fail(f"{block.page}:{block.line}: plugins.settings.{section}: {exc}")
