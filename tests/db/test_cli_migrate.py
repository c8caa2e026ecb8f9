"""`minichat migrate current | upgrade | downgrade` through the CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pg
import pytest

from minichat_host.cli import main
from minichat_host.db import migrate


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "minichat.yaml"
    path.write_text(
        f"database:\n  url: sqlite+aiosqlite:///{tmp_path / 'data' / 'minichat.db'}\n", encoding="utf-8"
    )
    return path


def _run_json(capsys: pytest.CaptureFixture[str], config_file: Path, *args: str) -> dict[str, Any]:
    assert main(["--config", str(config_file), "migrate", *args, "--json"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_current_upgrade_downgrade(capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
    head = migrate.head_revision()

    status = _run_json(capsys, config_file, "current")
    assert status["current"] is None
    assert status["head"] == head
    assert status["engine"] == "sqlite"
    assert status["up_to_date"] is False

    status = _run_json(capsys, config_file, "upgrade")
    assert (status["previous"], status["current"], status["up_to_date"]) == (None, head, True)

    assert _run_json(capsys, config_file, "current")["current"] == head

    status = _run_json(capsys, config_file, "downgrade", "0001_domain")
    assert (status["previous"], status["current"]) == (head, "0001_domain")

    status = _run_json(capsys, config_file, "downgrade", "base")
    assert status["current"] is None

    status = _run_json(capsys, config_file, "upgrade", "0001_domain")
    assert status["current"] == "0001_domain"


def test_text_output_and_progress(capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
    assert main(["--config", str(config_file), "migrate", "upgrade"]) == 0
    captured = capsys.readouterr()
    assert "-> 0001_domain" in captured.err  # one progress line per revision on stderr
    assert f"-> {migrate.head_revision()} (head)" in captured.out

    assert main(["--config", str(config_file), "migrate", "current"]) == 0
    assert f"{migrate.head_revision()} (head)" in capsys.readouterr().out


def test_unknown_revision_fails(capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
    assert main(["--config", str(config_file), "migrate", "downgrade", "no_such_revision"]) == 1
    assert "no_such_revision" in capsys.readouterr().err


def test_unsupported_database_url_is_a_config_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "minichat.yaml"
    path.write_text("database:\n  url: mysql://localhost/minichat\n", encoding="utf-8")
    assert main(["--config", str(path), "migrate", "current"]) == 2
    assert "database.url" in capsys.readouterr().err


def test_unreachable_postgresql_fails_cleanly(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "minichat.yaml"
    port = pg.free_loopback_port()
    path.write_text(
        f"database:\n  url: postgresql+asyncpg://postgres:hunter2@127.0.0.1:{port}/x\n", encoding="utf-8"
    )
    assert main(["--config", str(path), "migrate", "current"]) == 1
    err = capsys.readouterr().err
    assert "unavailable" in err
    assert "hunter2" not in err


def test_missing_postgresql_database_fails_cleanly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pg_server: str
) -> None:
    path = tmp_path / "minichat.yaml"
    path.write_text(f"database:\n  url: {pg.database_url(pg_server, 'no_such_database')}\n", encoding="utf-8")
    assert main(["--config", str(path), "migrate", "upgrade"]) == 1
    assert "no_such_database" in capsys.readouterr().err
