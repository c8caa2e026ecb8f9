"""`--json` everywhere: every command that prints a result prints exactly one JSON document on stdout.

The table below names an invocation for every leaf command of the parser; a command added without one
(or without `--json`) fails here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from minichat_host import constants
from minichat_host.cli import build_parser

from .helpers import make_dead_letters, run, write_config

# Commands that print no result (a server's log is not one).
NO_RESULT = {"minichat serve"}


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        return [parser]
    return [leaf for action in actions for child in action.choices.values() for leaf in leaf_parsers(child)]


def invocations(tmp_path: Path) -> list[tuple[str, list[str], int]]:
    """(command, arguments, expected exit code) in the order they run against one database."""
    letters = ["outbox", "dead-letters"]
    return [
        ("minichat config check", ["config", "check"], 0),
        ("minichat plugins", ["plugins"], 0),
        ("minichat plugin new", ["plugin", "new", "json-probe", "--dir", str(tmp_path / "probe")], 0),
        ("minichat migrate current", ["migrate", "current"], 0),
        ("minichat migrate upgrade", ["migrate", "upgrade"], 0),
        ("minichat outbox status", ["outbox", "status"], 0),
        ("minichat outbox dead-letters list", [*letters, "list", "--status", "all"], 0),
        ("minichat outbox dead-letters show", [*letters, "show", "1"], 0),
        ("minichat outbox dead-letters replay", [*letters, "replay", "1", "2"], 0),
        ("minichat outbox dead-letters replay", [*letters, "replay", "1", "999"], 1),  # a result, and exit 1
        ("minichat outbox dead-letters discard", [*letters, "discard", "--all", "--batch-size", "1"], 0),
        ("minichat outbox dead-letters discard", [*letters, "discard", "3"], 1),
        ("minichat migrate downgrade", ["migrate", "downgrade", "base"], 0),
    ]


def test_every_command_that_prints_a_result_prints_one_json_document(
    sqlite_migrated_db_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(constants.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.delenv(constants.ENV_LOAD_PLUGINS, raising=False)
    monkeypatch.chdir(tmp_path)
    asyncio.run(make_dead_letters(sqlite_migrated_db_url, 4))
    config = write_config(tmp_path, sqlite_migrated_db_url)

    table = invocations(tmp_path)
    commands = {parser.prog for parser in leaf_parsers(build_parser())} - NO_RESULT
    assert commands == {name for name, _, _ in table}, "every command has an invocation here"

    documents: dict[str, list[Any]] = {}
    for name, argv, expected in table:
        code, out, err = run(capsys, "--config", config, *argv, "--json")
        assert code == expected, f"{name} {argv}: exit {code}\n{err}"
        try:
            document = json.loads(out)  # one document: trailing text fails to parse
        except json.JSONDecodeError as exc:
            pytest.fail(f"{name} {argv} --json printed no single JSON document ({exc}):\n{out}")
        documents.setdefault(name, []).append(document)
        assert "%|" not in err, "no progress bar with --json"

    assert documents["minichat migrate upgrade"][0]["up_to_date"] is True
    assert documents["minichat outbox dead-letters show"][0]["id"] == 1
    assert documents["minichat outbox dead-letters replay"] == [{"replayed": [1, 2]}, {"replayed": []}]
    assert documents["minichat outbox dead-letters discard"] == [{"discarded": [3, 4]}, {"discarded": []}]
    assert documents["minichat migrate downgrade"][0]["current"] is None
    assert documents["minichat plugin new"][0]["package"] == "minichat_json_probe"
