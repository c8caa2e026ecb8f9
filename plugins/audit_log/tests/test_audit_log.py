"""audit_log: line format, rotation, redaction, 8 KiB truncation, fsync policy, concurrent writers."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from minichat_audit_log import MAX_STRING_BYTES, AuditLogPlugin, Redactor

from minichat_host import constants
from minichat_host.plugins.errors import PluginConfigError
from minichat_host.plugins.manager import PluginHost
from minichat_host.plugins.types import (
    AuditUsage,
    LatencyMs,
    PolicyDecisions,
    QuotaPolicyDecision,
    TurnAuditEvent,
    TurnDeleteAuditEvent,
    TurnMutationAuditEvent,
)
from minichat_host.testing import make_config

Start = Callable[..., Awaitable[PluginHost]]
TENANT = "00000000df515b429538d2b56b7ee953"


@pytest.fixture
async def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Start]:
    """Start a host with the installed entry points `policy_static` and `audit_log` and these settings."""
    monkeypatch.setenv(constants.ENV_LOAD_PLUGINS, "policy_static,audit_log")
    hosts: list[PluginHost] = []

    async def factory(settings: dict[str, Any] | None = None) -> PluginHost:
        raw = {"plugins": {"settings": {"audit_log": settings or {}}}}
        host = PluginHost(make_config(tmp_path, raw))
        hosts.append(host)
        await host.start()
        return host

    yield factory
    for host in hosts:
        await host.aclose()


def turn_event(prompt: str = "hello", response: str = "hi") -> TurnAuditEvent:
    return TurnAuditEvent(
        event_type="turn_completed",
        timestamp="2026-11-22T10:00:00Z",
        tenant_id=TENANT,
        user_id="u" * 32,
        chat_id="c" * 32,
        turn_id="t" * 32,
        request_id="r" * 32,
        selected_model="local-premium",
        effective_model="local-standard",
        usage=AuditUsage(input_tokens=12, output_tokens=34),
        latency_ms=LatencyMs(ttft_ms=5, total_ms=50),
        policy_decisions=PolicyDecisions(quota=QuotaPolicyDecision(decision="downgrade")),
        prompt=prompt,
        response=response,
    )


def mutation(event_type: str) -> TurnMutationAuditEvent:
    return TurnMutationAuditEvent(
        event_type=event_type,  # type: ignore[arg-type]
        timestamp="2026-11-22T10:00:01Z",
        tenant_id=TENANT,
        actor_user_id="u" * 32,
        chat_id="c" * 32,
        turn_id="t" * 32,
        original_request_id="r" * 32,
        new_request_id="n" * 32,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_each_hook_writes_one_typed_line(start: Start, tmp_path: Path) -> None:
    host = await start()
    assert host.resolve("audit").plugin == "audit_log"
    assert not (tmp_path / "audit.jsonl").exists()  # nothing is created before the first event
    delete = TurnDeleteAuditEvent(
        event_type="turn_delete",
        timestamp="2026-11-22T10:00:02Z",
        tenant_id=TENANT,
        actor_user_id="u" * 32,
        chat_id="c" * 32,
        turn_id="t" * 32,
        request_id="r" * 32,
    )
    await host.call("audit", "emit_turn_audit", event=turn_event())
    await host.call("audit", "emit_turn_retry_audit", event=mutation("turn_retry"))
    await host.call("audit", "emit_turn_edit_audit", event=mutation("turn_edit"))
    await host.call("audit", "emit_turn_delete_audit", event=delete)
    written = lines(tmp_path / "audit.jsonl")
    assert [(w["type"], w["event"]["event_type"]) for w in written] == [
        ("turn", "turn_completed"),
        ("mutation", "turn_retry"),
        ("mutation", "turn_edit"),
        ("delete", "turn_delete"),
    ]
    assert all(set(w) == {"type", "event"} for w in written)
    turn = written[0]["event"]
    assert turn["usage"] == {"input_tokens": 12, "output_tokens": 34}
    assert turn["policy_decisions"]["quota"]["decision"] == "downgrade"
    assert turn["prompt"] == "hello"
    assert written[1]["event"]["new_request_id"] == "n" * 32


async def test_custom_path(start: Start, tmp_path: Path) -> None:
    target = tmp_path / "logs" / "audit-custom.jsonl"
    host = await start({"path": str(target)})
    await host.call("audit", "emit_turn_audit", event=turn_event())
    assert len(lines(target)) == 1


async def test_rotation_keeps_the_configured_number_of_files(start: Start, tmp_path: Path) -> None:
    host = await start({"rotate_bytes": 1500, "keep_files": 2, "fsync": "never"})
    for index in range(30):
        await host.call("audit", "emit_turn_audit", event=turn_event(prompt=f"message {index}"))
    current = tmp_path / "audit.jsonl"
    first, second = tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl.2"
    assert current.exists() and first.exists() and second.exists()
    assert not (tmp_path / "audit.jsonl.3").exists()
    for path in (current, first, second):
        assert path.stat().st_size <= 1500
    # Newest in the live file, then .1, then .2: prompts increase from .2 to the live file.
    order = [int(w["event"]["prompt"].split()[1]) for p in (second, first, current) for w in lines(p)]
    assert order == sorted(order)
    assert order[-1] == 29


async def test_secrets_are_redacted(start: Start, tmp_path: Path) -> None:
    host = await start({"redact_keys": ["api_key", "authorization", "password", "secret", "token", "cookie"]})
    prompt = "call it with Authorization: Bearer abc.DEF-123_x== and key sk-proj-AbCdEf0123456789xyz please"
    await host.call("audit", "emit_turn_audit", event=turn_event(prompt=prompt))
    raw_event = {
        "headers": {"Authorization": "Basic dXNlcjpwYXNz", "X-Api-Key": "k-123", "Cookie": "session=1"},
        "access_token": "eyJhbGciOi",
        "password": None,
        "input_tokens": 5,
        "notes": ["bearer xyz987", "plain"],
    }
    await host.call("audit", "emit_turn_delete_audit", event=raw_event)
    text = (tmp_path / "audit.jsonl").read_text(encoding="utf-8")
    for secret in (
        "abc.DEF-123_x",
        "AbCdEf0123456789xyz",
        "dXNlcjpwYXNz",
        "k-123",
        "session=1",
        "eyJhbGciOi",
        "xyz987",
    ):
        assert secret not in text
    turn, other = lines(tmp_path / "audit.jsonl")
    assert turn["event"]["prompt"] == (
        "call it with Authorization: Bearer [REDACTED] and key sk-[REDACTED] please"
    )
    event = other["event"]
    assert event["headers"] == {
        "Authorization": "[REDACTED]",
        "X-Api-Key": "[REDACTED]",
        "Cookie": "[REDACTED]",
    }
    assert event["access_token"] == "[REDACTED]"
    assert event["password"] is None
    assert event["input_tokens"] == 5  # a count named like a secret is kept
    assert event["notes"] == ["bearer [REDACTED]", "plain"]


@pytest.mark.parametrize("char", ["a", "é", "🙂"])
async def test_strings_are_truncated_to_8_kib_and_marked(start: Start, tmp_path: Path, char: str) -> None:
    host = await start()
    long_text = char * 20_000
    await host.call("audit", "emit_turn_audit", event=turn_event(prompt=long_text, response="short"))
    [written] = lines(tmp_path / "audit.jsonl")
    prompt = written["event"]["prompt"]
    assert len(prompt.encode("utf-8")) <= MAX_STRING_BYTES
    assert prompt.endswith(f"…[truncated, {len(long_text.encode('utf-8'))} bytes]")
    assert prompt.startswith(char * 100)
    assert "\ufffd" not in prompt
    assert written["event"]["response"] == "short"


def test_a_string_of_exactly_8_kib_is_kept() -> None:
    text = "x" * MAX_STRING_BYTES
    assert Redactor([]).clean({"s": text}) == {"s": text}


@pytest.mark.parametrize("policy", ["always", "never"])
async def test_fsync_setting_is_accepted(start: Start, tmp_path: Path, policy: str) -> None:
    host = await start({"fsync": policy})
    await host.call("audit", "emit_turn_audit", event=turn_event())
    assert len(lines(tmp_path / "audit.jsonl")) == 1


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"fsync": "sometimes"}, "$.fsync"),
        ({"rotate_bytes": 0}, "$.rotate_bytes"),
        ({"keep_files": 0}, "$.keep_files"),
        ({"rotate": 1}, "unknown field `rotate`"),
    ],
)
async def test_bad_settings_fail_start_up(start: Start, settings: dict[str, Any], expected: str) -> None:
    with pytest.raises(PluginConfigError) as info:
        await start(settings)
    assert "plugins.settings.audit_log" in str(info.value)
    assert expected in str(info.value)


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    plugin = AuditLogPlugin()
    settings = plugin.settings.__class__(fsync="never", rotate_bytes=20_000, keep_files=50)
    plugin.minichat_configure(settings=settings, data_dir=tmp_path)

    def write(worker: int) -> None:
        for index in range(50):
            plugin.minichat_emit_turn_audit(event=turn_event(prompt=f"{worker}-{index}" + "x" * 200))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    plugin.minichat_shutdown()
    files = [tmp_path / "audit.jsonl", *plugin.writer.rotated_paths()]
    prompts = [w["event"]["prompt"] for path in files for w in lines(path)]
    assert len(prompts) == 400
    assert len(set(prompts)) == 400


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("BEARER abc123 then", "BEARER [REDACTED] then"),
        ("x bEaReR\tabc123", "x bEaReR [REDACTED]"),
        ("key=sk-live0123456789", "key=sk-[REDACTED]"),
        ("sk-short and bearer", "sk-short and bearer"),  # the literal parts alone are not secrets
        ("plain text " * 200, "plain text " * 200),
    ],
)
def test_redaction_finds_every_spelling_the_patterns_match(text: str, expected: str) -> None:
    assert Redactor([]).redact_text(text) == expected


def test_secret_keys_stay_recognized_past_the_key_memo() -> None:
    redactor = Redactor(["token"])
    for round_ in range(2):  # the second round answers from the memo (cleared once it is full)
        for index in range(5000):
            assert redactor.is_secret_key(f"k{index}_token")
            assert not redactor.is_secret_key(f"k{index}_tokens")
        assert redactor.is_secret_key("Access-Token"), round_


@pytest.mark.parametrize(
    ("count", "kept"), [(MAX_STRING_BYTES // 4, True), (MAX_STRING_BYTES // 4 + 1, False)]
)
def test_truncation_counts_bytes_at_the_four_byte_boundary(count: int, kept: bool) -> None:
    text = "🙂" * count
    cleaned = Redactor([]).clean({"s": text})["s"]
    assert (cleaned == text) is kept
    assert len(cleaned.encode("utf-8")) <= MAX_STRING_BYTES
