"""`server.event_loop`: which loop `minichat serve` installs, and a config error when uvloop is asked for
but missing (exit 2 before anything is bound)."""

from __future__ import annotations

import asyncio
import sys
import types
from pathlib import Path

import pytest
import yaml

from minichat_host.cli import main
from minichat_host.cli.exit_codes import ExitCode
from minichat_host.cli.serve import _install_event_loop
from minichat_host.config import ConfigError, load_config


def _uvloop_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError


def _uvloop_present(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    installed: list[str] = []
    module = types.ModuleType("uvloop")
    module.install = lambda: installed.append("uvloop")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvloop", module)
    return installed


def test_the_default_is_the_standard_loop(tmp_path: Path) -> None:
    path = tmp_path / "minichat.yaml"
    path.write_text("server: {port: 0}\n", encoding="utf-8")
    assert load_config(str(path)).server.event_loop == "asyncio"


def test_asyncio_never_imports_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = _uvloop_present(monkeypatch)
    policy = asyncio.get_event_loop_policy()
    _install_event_loop("asyncio")
    assert installed == []
    assert asyncio.get_event_loop_policy() is policy


def test_uvloop_and_auto_install_it_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = _uvloop_present(monkeypatch)
    _install_event_loop("uvloop")
    _install_event_loop("auto")
    assert installed == ["uvloop", "uvloop"]


def test_auto_falls_back_when_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _uvloop_missing(monkeypatch)
    _install_event_loop("auto")  # no error: the standard loop stays


def test_uvloop_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _uvloop_missing(monkeypatch)
    with pytest.raises(ConfigError, match="uvloop package is not installed"):
        _install_event_loop("uvloop")


def test_serve_exits_2_when_uvloop_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _uvloop_missing(monkeypatch)
    path = tmp_path / "minichat.yaml"
    config = {"server": {"port": 0, "event_loop": "uvloop", "data_dir": str(tmp_path / "data")}}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["--config", str(path), "serve"]) == ExitCode.USAGE
    assert "server.event_loop is 'uvloop'" in capsys.readouterr().err


def test_an_unknown_loop_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "minichat.yaml"
    path.write_text("server: {event_loop: trio}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="event_loop"):
        load_config(str(path))
