"""policy_static: catalog, kill switches and limits from settings; version 1 only; the usage ledger."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from minichat_policy_static import PolicyStaticPlugin, PolicyVersionNotFound, ledger_report
from minichat_policy_static.ledger import UsageLedger, main

from minichat_host import PermanentError, constants
from minichat_host.plugins.errors import PluginConfigError
from minichat_host.plugins.manager import PluginHost
from minichat_host.plugins.types import PolicySnapshot, Usage, UsageEvent, UserLimits
from minichat_host.testing import make_config

TENANT = "00000000df515b429538d2b56b7ee953"
USER = "111111116a8847689dfc6bcd5187d9ed"
Start = Callable[..., Awaitable[PluginHost]]


@pytest.fixture
async def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    """Start a host with the installed entry point `policy_static` (and no audit) and these settings."""
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "policy_static")
    hosts: list[PluginHost] = []

    async def factory(settings: dict[str, Any] | None = None, **plugins: Any) -> PluginHost:
        raw = {"plugins": {"audit_vendor": "", "settings": {"policy_static": settings or {}}, **plugins}}
        host = PluginHost(make_config(tmp_path, raw))
        hosts.append(host)
        await host.start()
        return host

    yield factory
    for host in hosts:
        await host.aclose()


def usage_event(
    request: str, *, model: str = "local-standard", credits: int = 1000, **extra: Any
) -> UsageEvent:
    fields: dict[str, Any] = {
        "tenant_id": TENANT,
        "user_id": USER,
        "chat_id": "c" * 32,
        "turn_id": "t" + request,
        "request_id": request,
        "effective_model": model,
        "selected_model": model,
        "terminal_state": "completed",
        "billing_outcome": "completed",
        "actual_credits_micro": credits,
        "settlement_method": "actual",
        "policy_version_applied": 1,
        "timestamp": "2026-11-22T10:00:00Z",
        "usage": Usage(input_tokens=10, output_tokens=20),
        "dedupe_key": f"{TENANT}/t{request}/{request}",
    }
    fields.update(extra)
    return UsageEvent(**fields)


async def snapshot(host: PluginHost, version: int = 1) -> PolicySnapshot:
    result: PolicySnapshot = await host.call(
        "model_policy", "get_policy_snapshot", tenant_id=TENANT, user_id=USER, policy_version=version
    )
    return result


async def test_default_catalog_is_the_offline_local_models(start: Start) -> None:
    host = await start()
    assert host.resolve("model_policy").plugin == "policy_static"
    snap = await snapshot(host)
    assert snap.user_id == USER and snap.policy_version == 1
    premium, standard = snap.model_catalog
    assert (premium.id, premium.tier, premium.multiplier_display) == ("local-premium", "premium", "3x")
    assert (premium.input_tokens_credit_multiplier_micro, premium.output_tokens_credit_multiplier_micro) == (
        3_000_000,
        15_000_000,
    )
    assert premium.preference is not None and premium.preference.is_default
    assert (standard.id, standard.tier, standard.multiplier_display) == ("local-standard", "standard", "1x")
    assert (
        standard.input_tokens_credit_multiplier_micro,
        standard.output_tokens_credit_multiplier_micro,
    ) == (
        1_000_000,
        3_000_000,
    )
    for entry in (premium, standard):
        assert entry.provider_id == "local" and entry.enabled
        assert entry.multimodal_capabilities == ["VISION_INPUT"]
        assert (entry.context_window, entry.max_output_tokens, entry.max_input_tokens) == (
            128000,
            4096,
            120000,
        )
        assert (
            entry.general_config.tool_support.file_search
            and entry.general_config.tool_support.code_interpreter
        )
        assert entry.description and "Offline local model (no network)" in entry.description
    assert not snap.kill_switches.disable_premium_tier


async def test_catalog_and_kill_switches_come_from_settings(start: Start) -> None:
    settings = {
        "model_catalog": [
            {"id": "gpt-x", "provider_model_id": "gpt-x-2026", "display_name": "GPT X", "tier": "premium"}
        ],
        "kill_switches": {"disable_web_search": True, "force_standard_tier": True},
    }
    host = await start(settings)
    snap = await snapshot(host)
    assert [m.id for m in snap.model_catalog] == ["gpt-x"]
    assert snap.model_catalog[0].tier == "premium"
    assert snap.kill_switches.disable_web_search and snap.kill_switches.force_standard_tier
    assert not snap.kill_switches.disable_images


async def test_limits_default_and_from_settings(start: Start) -> None:
    host = await start()
    limits: UserLimits = await host.call(
        "model_policy", "get_user_limits", tenant_id=TENANT, user_id=USER, policy_version=1
    )
    assert (limits.standard.limit_daily_credits_micro, limits.standard.limit_monthly_credits_micro) == (
        100_000_000,
        1_000_000_000,
    )
    assert (limits.premium.limit_daily_credits_micro, limits.premium.limit_monthly_credits_micro) == (
        50_000_000,
        500_000_000,
    )
    custom = await start(
        {"default_premium_limits": {"limit_daily_credits_micro": 7, "limit_monthly_credits_micro": 70}}
    )
    limits = await custom.call(
        "model_policy", "get_user_limits", tenant_id=TENANT, user_id=USER, policy_version=1
    )
    assert (limits.premium.limit_daily_credits_micro, limits.premium.limit_monthly_credits_micro) == (7, 70)
    assert limits.standard.limit_daily_credits_micro == 100_000_000


async def test_policy_version_is_always_1_and_others_are_not_found(start: Start) -> None:
    host = await start()
    assert await host.call("model_policy", "get_current_policy_version", tenant_id=TENANT, user_id=USER) == 1
    assert await host.call("model_policy", "check_user_license", tenant_id=TENANT, user_id=USER) is True
    with pytest.raises(PolicyVersionNotFound, match="policy version 2 not found") as info:
        await snapshot(host, version=2)
    assert isinstance(info.value, PermanentError)
    with pytest.raises(PolicyVersionNotFound):
        await host.call("model_policy", "get_user_limits", tenant_id=TENANT, user_id=USER, policy_version=0)


async def test_vendor_and_priority_are_settings(start: Start) -> None:
    host = await start({"vendor": "acme", "priority": 5}, model_policy_vendor="acme")
    resolution = host.resolve("model_policy")
    assert (resolution.plugin, resolution.vendor, resolution.priority) == ("policy_static", "acme", 5)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"colour": "red"}, "unknown field `colour`"),
        (
            {"model_catalog": [{"id": "m", "provider_model_id": "p", "display_name": "M", "tyer": "x"}]},
            "tyer",
        ),
        (
            {"model_catalog": [{"id": "m", "provider_model_id": "p", "display_name": "M", "tier": "gold"}]},
            "tier",
        ),
        (
            {"default_standard_limits": {"limit_daily_credits_micro": -1, "limit_monthly_credits_micro": 1}},
            "negative",
        ),
        (
            {"model_catalog": [{"id": "m", "provider_model_id": "p", "display_name": "M"}] * 2},
            "duplicate ids: m",
        ),
    ],
)
async def test_bad_settings_fail_start_up(start: Start, settings: dict[str, Any], expected: str) -> None:
    with pytest.raises(PluginConfigError) as info:
        await start(settings)
    assert "plugins.settings.policy_static" in str(info.value)
    assert expected in str(info.value)


async def test_catalog_must_name_configured_providers(start: Start) -> None:
    catalog = [{"id": "m", "provider_model_id": "p", "display_name": "M", "provider_id": "nowhere"}]
    with pytest.raises(PluginConfigError, match="missing from `providers`: nowhere"):
        await start({"model_catalog": catalog})


async def test_publish_usage_appends_once_per_dedupe_key(start: Start, tmp_path: Path) -> None:
    host = await start()
    first, second = usage_event("r1", credits=1000), usage_event("r2", model="local-premium", credits=500)
    for event in (first, second, first):  # the third is an outbox redelivery
        await host.call("model_policy", "publish_usage", event=event)
    ledger = tmp_path / "usage-ledger.jsonl"
    lines = ledger.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["r1", "r2"]
    await host.aclose()

    # A restarted plugin remembers the keys already in the ledger.
    again = await start()
    await again.call("model_policy", "publish_usage", event=first)
    await again.call("model_policy", "publish_usage", event=usage_event("r3", credits=250))
    report = ledger_report(ledger)
    assert report["events"] == 3
    assert report["total_credits_micro"] == 1750
    assert report["by_model"] == {
        "local-premium": {"events": 1, "credits_micro": 500, "input_tokens": 10, "output_tokens": 20},
        "local-standard": {"events": 2, "credits_micro": 1250, "input_tokens": 20, "output_tokens": 40},
    }
    plugin = PolicyStaticPlugin()
    plugin.minichat_configure(
        settings=plugin.settings, config=make_config(tmp_path), data_dir=make_config(tmp_path).data_dir()
    )
    assert plugin.ledger_report()["events"] == 3


async def test_publish_usage_rejects_a_malformed_event(start: Start) -> None:
    host = await start()
    with pytest.raises(PermanentError, match="not a usage event"):
        await host.call("model_policy", "publish_usage", event={"tenant_id": TENANT})
    # A plain mapping (as decoded from the outbox payload) is accepted too.
    await host.call("model_policy", "publish_usage", event=msgspec.to_builtins(usage_event("d")))


def test_ledger_without_dedupe_key_uses_the_turn_key(tmp_path: Path) -> None:
    ledger = UsageLedger(tmp_path / "l.jsonl")
    assert ledger.append(usage_event("r1", dedupe_key=None))
    assert not ledger.append(usage_event("r1", dedupe_key=None))
    system = usage_event(
        "s1", dedupe_key=None, turn_id=None, user_id=None, system_task_type="thread_summary_update"
    )
    assert ledger.append(system)
    assert f"{TENANT}/thread_summary_update/s1" in ledger


def test_ledger_survives_a_line_cut_short_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    UsageLedger(path).append(usage_event("r1"))
    with path.open("ab") as handle:
        handle.write(b'{"tenant_id": "cut sho')
    ledger = UsageLedger(path)
    assert ledger.append(usage_event("r2"))
    assert not ledger.append(usage_event("r1"))
    report = ledger_report(path)
    assert (report["events"], report["skipped_lines"]) == (2, 1)


def test_ledger_appends_from_many_threads_once_each(tmp_path: Path) -> None:
    ledger = UsageLedger(tmp_path / "l.jsonl", fsync=False)
    events = [usage_event(f"r{i}") for i in range(40)]

    def publish() -> None:
        for event in events:
            ledger.append(event)

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger_report(ledger.path)["events"] == 40
    assert len(ledger.path.read_text(encoding="utf-8").splitlines()) == 40


def test_console_script_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "l.jsonl"
    UsageLedger(path).append(usage_event("r1", credits=42))
    assert main(["--path", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_credits_micro"] == 42
    assert main(["--path", str(path)]) == 0
    out = capsys.readouterr().out
    assert "events: 1" in out and "local-standard: 1 events, 42 credits" in out


def test_console_script_finds_the_ledger_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = tmp_path / "custom.jsonl"
    UsageLedger(ledger).append(usage_event("r1", credits=9))
    config = tmp_path / "minichat.yaml"
    config.write_text(
        f"plugins:\n  settings:\n    policy_static:\n      ledger_path: {ledger}\n", encoding="utf-8"
    )
    assert main(["--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(ledger)
