"""Config: defaults, YAML + ${ENV} expansion, and start-up failures that name the key path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minichat_host.cli import main
from minichat_host.config import Config, ConfigError, load_config, masked, parse_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "minichat.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_gives_embedded_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MINICHAT_CONFIG", raising=False)
    monkeypatch.setenv("MINICHAT_HOME", str(tmp_path / "home"))
    config = load_config()
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8087
    assert config.server.url_prefix == "/mini-chat"
    assert config.auth.mode == "dev"
    assert config.providers["local"].kind == "local"
    assert config.database_url() == f"sqlite+aiosqlite:///{tmp_path / 'home' / 'minichat.db'}"
    assert config.outbox.num_partitions == 4
    assert config.estimation_budgets.minimal_generation_floor == 50


def test_every_section_of_the_spec_exists() -> None:
    sections = {
        "server",
        "database",
        "auth",
        "providers",
        "plugins",
        "streaming",
        "quota",
        "estimation_budgets",
        "outbox",
        "rag",
        "context",
        "orphan_watchdog",
        "thread_summary",
        "cleanup",
    }
    assert sections <= set(Config.__struct_fields__)


def test_yaml_and_env_expansion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "server:\n  port: 9000\n"
        "database:\n  url: ${DB_URL}\n"
        "providers:\n  openai:\n    kind: openai_responses\n    base_url: https://api.openai.com\n"
        "    api_key: ${OPENAI_KEY}\n    api_path: ${API_PATH:-/v1/responses}\n",
    )
    config = load_config(path, env={"DB_URL": "postgresql+asyncpg://u:pw@db/x", "OPENAI_KEY": "sk-secret"})
    assert config.server.port == 9000
    assert config.database.url == "postgresql+asyncpg://u:pw@db/x"
    assert config.providers["openai"].api_key == "sk-secret"
    assert config.providers["openai"].api_path == "/v1/responses"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("server:\n  prot: 1\n", ["unknown field", "prot", "$.server"]),
        ("bogus: 1\n", ["unknown field", "bogus"]),
        ("server:\n  port: eighty\n", ["Expected `int`", "$.server.port"]),
        ("server:\n  port: 70000\n", ["<= 65535", "$.server.port"]),
        ("quota:\n  warning_threshold_pct: 0\n", [">= 1", "$.quota.warning_threshold_pct"]),
        ("outbox:\n  num_partitions: 3\n", ["power of two", "$.outbox"]),
        ("auth:\n  mode: nobody\n", ["$.auth.mode"]),
        ("providers:\n  x:\n    kind: nope\n", ["$.providers.x.kind"]),
        ("database:\n  url: ${MISSING_VAR}\n", ["$.database.url", "MISSING_VAR", "not set"]),
        ("- a\n- b\n", ["mapping"]),
        ("server: [\n", ["not valid YAML"]),
    ],
)
def test_bad_config_names_the_key_and_reason(tmp_path: Path, text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", env={})


def test_masked_hides_secrets() -> None:
    config = parse_config(
        {
            "database": {"url": "postgresql+asyncpg://app:hunter2@db/minichat"},
            "auth": {"jwt": {"secret": "topsecret"}, "trusted_headers": {"secret": "s3"}},
            "providers": {"openai": {"kind": "openai_responses", "api_key": "sk-live"}},
        },
        env={},
    )
    text = json.dumps(masked(config))
    for secret in ("hunter2", "topsecret", 's3"', "sk-live"):
        assert secret not in text
    assert masked(config)["auth"]["jwt"]["tenant_claim"] == "tenant_id"


def test_cli_config_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "auth:\n  jwt:\n    secret: abc123\n")
    assert main(["config", "check", "--json", "--config", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["auth"]["jwt"]["secret"] == "***"
    assert main(["--config", str(write(tmp_path, "server:\n  port: x\n")), "config", "check"]) == 2
    assert "$.server.port" in capsys.readouterr().err
