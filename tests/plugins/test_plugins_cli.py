"""`minichat plugins [--json]`: discovered plugins, their capabilities and what each resolved to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minichat_host import constants
from minichat_host.cli import main


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "minichat.yaml"
    path.write_text(f"server:\n  data_dir: {tmp_path / 'data'}\n{text}", encoding="utf-8")
    return path


def test_plugins_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(
        tmp_path,
        "providers:\n"
        "  local: {kind: local, storage: local}\n"
        "  oai: {kind: openai_responses, base_url: 'http://127.0.0.1:9', storage: openai}\n",
    )
    assert main(["--config", str(config), "plugins", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["error"] is None
    plugins = {p["name"]: p for p in report["plugins"]}
    assert plugins["policy_static"]["distribution"] == "minichat-policy-static"
    assert plugins["policy_static"]["capabilities"] == [
        {"capability": "model_policy", "vendor": "minichat", "priority": 100}
    ]
    assert plugins["local_storage"]["source"] == "builtin"
    resolved = {(e["capability"], e["provider_id"]): e for e in report["resolution"]}
    assert resolved[("storage", "oai")]["plugin"] == "storage_openai"
    assert resolved[("storage", "local")]["plugin"] == "local_storage"
    assert "vendor 'minichat' matched 1 plugin" in resolved[("model_policy", None)]["reason"]
    assert not (tmp_path / "data").exists()  # inspecting plugins writes nothing


def test_plugins_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(write_config(tmp_path, "")), "plugins"]) == 0
    out = capsys.readouterr().out
    assert "policy_static  (entry point, minichat-policy-static" in out
    assert "model_policy: plugins.model_policy_vendor = 'minichat' -> policy_static" in out
    assert "storage (provider local): providers.local.storage = 'local' -> local_storage" in out


def test_plugins_reports_a_missing_vendor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, "plugins:\n  audit_vendor: acme\n")
    assert main(["--config", str(config), "plugins", "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "installed audit vendors: 'minichat'" in report["error"]
    audit = next(e for e in report["resolution"] if e["capability"] == "audit")
    assert audit["plugin"] is None
    assert audit["candidates"][0]["plugin"] == "audit_log"
    assert "plugin set-up error" in captured.err


def test_plugins_respects_load_plugins_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "policy_static,audit_log")
    assert main(["--config", str(write_config(tmp_path, "")), "plugins", "--json"]) == 0
    names = {p["name"] for p in json.loads(capsys.readouterr().out)["plugins"]}
    assert names == {"local_storage", "policy_static", "audit_log"}
