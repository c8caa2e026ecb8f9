"""The usage ledger: one JSON line per usage event, each dedupe key at most once, fsynced per append.

The outbox delivers at least once, so a redelivered event (same `dedupe_key`) is dropped. The keys already
in the file are loaded when the plugin starts and kept in memory. A line cut short by a crash is skipped
when reading, and the next append starts on a fresh line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from minichat_host.plugins.types import UsageEvent

log = logging.getLogger(__name__)

DEFAULT_FILENAME = "usage-ledger.jsonl"


def dedupe_key_of(event: UsageEvent) -> str:
    """The event's dedupe key; older producers without one get the key the consumers agreed on."""
    if event.dedupe_key:
        return event.dedupe_key
    if event.turn_id:
        return f"{event.tenant_id}/{event.turn_id}/{event.request_id}"
    return f"{event.tenant_id}/{event.system_task_type or 'system'}/{event.request_id}"


def _read_events(path: Path) -> Iterator[UsageEvent | None]:
    """Each line decoded as a UsageEvent, None for a line that is not one (e.g. cut short by a crash)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    decoder = msgspec.json.Decoder(UsageEvent)
    with handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                yield decoder.decode(line)
            except msgspec.DecodeError:
                yield None


class UsageLedger:
    """Append-only, deduplicated JSON-lines file; safe to call from several threads."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self._lock = threading.Lock()
        self._keys: set[str] = set()
        self._needs_newline = False
        self._load()

    def _load(self) -> None:
        bad = 0
        for event in _read_events(self.path):
            if event is None:
                bad += 1
            else:
                self._keys.add(dedupe_key_of(event))
        if bad:
            log.warning("usage ledger %s: skipped %d unreadable line(s)", self.path, bad)
        try:
            with self.path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell():
                    handle.seek(-1, os.SEEK_END)
                    self._needs_newline = handle.read(1) != b"\n"
        except FileNotFoundError:
            self._needs_newline = False

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def append(self, event: UsageEvent) -> bool:
        """Write the event unless its dedupe key is already in the ledger; True when it was written."""
        key = dedupe_key_of(event)
        line = msgspec.json.encode(event) + b"\n"
        with self._lock:
            if key in self._keys:
                return False
            if self._needs_newline:
                line = b"\n" + line
            created = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if created and self._fsync:
                _fsync_dir(self.path.parent)
            self._needs_newline = False
            self._keys.add(key)
            return True

    def report(self) -> dict[str, Any]:
        return ledger_report(self.path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ledger_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summarize a ledger file: event count, total credits and per-model totals (by effective model)."""
    ledger = Path(path)
    seen: set[str] = set()
    skipped = 0
    total_credits = 0
    by_model: dict[str, dict[str, int]] = {}
    for event in _read_events(ledger):
        if event is None:
            skipped += 1
            continue
        key = dedupe_key_of(event)
        if key in seen:
            continue
        seen.add(key)
        total_credits += event.actual_credits_micro
        totals = by_model.setdefault(
            event.effective_model, {"events": 0, "credits_micro": 0, "input_tokens": 0, "output_tokens": 0}
        )
        totals["events"] += 1
        totals["credits_micro"] += event.actual_credits_micro
        if event.usage is not None:
            totals["input_tokens"] += event.usage.input_tokens
            totals["output_tokens"] += event.usage.output_tokens
    return {
        "path": str(ledger),
        "events": len(seen),
        "total_credits_micro": total_credits,
        "by_model": dict(sorted(by_model.items())),
        "skipped_lines": skipped,
    }


def default_ledger_path(config_path: str | None) -> Path:
    """The ledger the plugin writes under this minichat config (its `ledger_path`, else the data dir's)."""
    from minichat_host.config import load_config

    config = load_config(config_path)
    section: dict[str, Any] = config.plugins.settings.get("policy_static", {})
    configured = section.get("ledger_path") or ""
    return Path(configured) if configured else config.data_dir() / DEFAULT_FILENAME


def main(argv: Sequence[str] | None = None) -> int:
    """`minichat-usage-ledger [--config FILE | --path LEDGER] [--json]`: print the ledger report."""
    parser = argparse.ArgumentParser(prog="minichat-usage-ledger", description="summarize the usage ledger")
    parser.add_argument(
        "--config", help="minichat config file (default: $MINICHAT_CONFIG or embedded defaults)"
    )
    parser.add_argument("--path", help="ledger file (default: the one the config points at)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    try:
        path = Path(args.path) if args.path else default_ledger_path(args.config)
    except Exception as exc:
        print(f"minichat-usage-ledger: {exc}", file=sys.stderr)
        return 2
    report = ledger_report(path)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"ledger: {report['path']}")
    print(f"events: {report['events']}  total credits (micro): {report['total_credits_micro']}")
    if report["skipped_lines"]:
        print(f"unreadable lines skipped: {report['skipped_lines']}")
    for model, totals in report["by_model"].items():
        print(
            f"  {model}: {totals['events']} events, {totals['credits_micro']} credits (micro), "
            f"{totals['input_tokens']} in / {totals['output_tokens']} out tokens"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
