"""The exit codes: one table (exit_codes.py) that docs/cli.md and `minichat --help` show, and that the
commands keep: success, bad usage, config error, not found."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest

from minichat_host.cli.exit_codes import MEANINGS, ExitCode

from .helpers import make_dead_letters, run, write_config

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def documented_codes() -> dict[int, str]:
    text = CLI_DOC.read_text(encoding="utf-8")
    section = re.search(r"^## Exit codes\s*$(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section is not None, "docs/cli.md has an `## Exit codes` section"
    rows = re.findall(r"^\| `(\d+)` \| (.*?) \|$", section.group(1), re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def flat(text: str) -> str:
    return " ".join(text.split())


def test_the_docs_table_is_the_code_table() -> None:
    assert documented_codes() == {int(code): meaning for code, meaning in MEANINGS.items()}
    assert set(MEANINGS) == set(ExitCode)


def test_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == ExitCode.OK
    help_text = flat(out)
    assert "exit codes:" in help_text
    for exit_code, meaning in MEANINGS.items():
        assert flat(f"{int(exit_code)} {meaning}") in help_text


@pytest.fixture
def config(sqlite_migrated_db_url: str, tmp_path: Path) -> str:
    asyncio.run(make_dead_letters(sqlite_migrated_db_url, 2))
    return write_config(tmp_path, sqlite_migrated_db_url)


def test_success(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["config", "check"], ["migrate", "current"], ["outbox", "dead-letters", "show", "1"]):
        code, _, err = run(capsys, "--config", config, *argv)
        assert (code, err) == (ExitCode.OK, ""), argv


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-command"],
        ["outbox", "status", "--no-such-option"],
        ["outbox", "dead-letters", "replay"],  # neither ids nor --all
        ["outbox", "dead-letters", "replay", "1", "--all"],  # both
        ["outbox", "dead-letters", "discard", "--all", "--batch-size", "0"],
        ["outbox", "dead-letters", "show", "not-a-number"],
        ["plugin", "new", "Bad_Name"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_bad_usage(argv: list[str], config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--config", config, *argv)
    assert code == ExitCode.USAGE
    assert out == "" and err.strip(), "nothing on stdout, a reason on stderr"


def test_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("outbox:\n  num_partitions: 3\n", encoding="utf-8")
    unknown_url = tmp_path / "mysql.yaml"
    unknown_url.write_text("database:\n  url: mysql://localhost/minichat\n", encoding="utf-8")
    for config, argv, reason in (
        (invalid, ["config", "check"], "outbox"),
        (invalid, ["outbox", "status", "--json"], "outbox"),
        (tmp_path / "missing.yaml", ["migrate", "current"], "cannot read config file"),
        (unknown_url, ["migrate", "upgrade"], "database.url"),
        (unknown_url, ["outbox", "dead-letters", "list"], "database.url"),
    ):
        code, out, err = run(capsys, "--config", str(config), *argv)
        assert code == ExitCode.USAGE, (argv, err)
        assert out == "" and "config error" in err and reason in err


def test_not_found(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--config", config, "outbox", "dead-letters", "show", "999")
    assert (code, out) == (ExitCode.FAILURE, "")
    assert "no dead letter with id 999" in err
    code, out, err = run(capsys, "--config", config, "outbox", "dead-letters", "replay", "999", "--json")
    assert (code, out.strip()) == (ExitCode.FAILURE, '{\n  "replayed": []\n}')
    assert "not pending" in err


@pytest.mark.slow
def test_the_process_exit_status_is_the_code(config: str) -> None:
    """Through the real entry point (`python -m minichat_host`), not just main()'s return value."""
    for argv, expected in (
        (["config", "check"], 0),
        (["outbox", "dead-letters", "show", "999"], 1),
        (["outbox", "dead-letters", "replay"], 2),
        (["outbox", "--bogus"], 2),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "minichat_host", "--config", config, *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == expected, (argv, result.stderr)
