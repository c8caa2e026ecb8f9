"""`server.event_loop`: which loop `minichat serve` installs, and a config error when uvloop is asked for
but missing (exit 2 before anything is bound)."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from minichat_host.cli import main
from minichat_host.cli.exit_codes import ExitCode
from minichat_host.cli.serve import _event_loop_factory
from minichat_host.config import ConfigError, load_config


def _uvloop_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError


def _uvloop_stand_in(monkeypatch: pytest.MonkeyPatch) -> Callable[[], asyncio.AbstractEventLoop]:
    module = types.ModuleType("uvloop")

    def new_event_loop() -> asyncio.AbstractEventLoop:
        raise AssertionError("only handed over, not called")

    module.new_event_loop = new_event_loop  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uvloop", module)
    return new_event_loop


def test_the_default_takes_uvloop_when_installed(tmp_path: Path) -> None:
    path = tmp_path / "minichat.yaml"
    path.write_text("server: {port: 0}\n", encoding="utf-8")
    assert load_config(str(path)).server.event_loop == "auto"  # the standard loop without the package


def test_asyncio_never_imports_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import would raise
    policy = asyncio.get_event_loop_policy()
    assert _event_loop_factory("asyncio") is None
    assert asyncio.get_event_loop_policy() is policy


def test_uvloop_and_auto_hand_over_its_loop_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    new_event_loop = _uvloop_stand_in(monkeypatch)
    policy = asyncio.get_event_loop_policy()
    assert _event_loop_factory("uvloop") is new_event_loop
    assert _event_loop_factory("auto") is new_event_loop
    assert asyncio.get_event_loop_policy() is policy  # no global policy installed


def test_the_real_uvloop_factory_makes_a_uvloop_loop() -> None:
    factory = _event_loop_factory("uvloop")
    assert factory is not None
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()


def test_auto_falls_back_when_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _uvloop_missing(monkeypatch)
    assert _event_loop_factory("auto") is None  # no error: the standard loop


def test_uvloop_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _uvloop_missing(monkeypatch)
    with pytest.raises(ConfigError, match="uvloop package is not installed"):
        _event_loop_factory("uvloop")


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
