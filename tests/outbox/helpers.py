"""Helpers for the outbox tests: fast timings, waiting, a scriptable recording handler, a child process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minichat_host.config import OutboxConfig
from minichat_host.outbox import Delivery

QUEUE = "test.queue"
CHILD_SCRIPT = Path(__file__).with_name("worker_child.py")


def fast_config(**overrides: Any) -> OutboxConfig:
    """Short leases and intervals so the suite stays fast."""
    values: dict[str, Any] = {
        "lease_seconds": 3.0,
        "lease_headroom_seconds": 0.5,
        "poll_interval_seconds": 0.05,
        "reconcile_interval_seconds": 0.2,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.4,
        "max_concurrent_partitions": 4,
        "vacuum_interval_seconds": 3600.0,
    }
    values.update(overrides)
    return OutboxConfig(**values)


async def wait_for(predicate: Callable[[], Any], within: float = 20.0, interval: float = 0.02) -> None:
    """Wait until `predicate()` (sync or async) is truthy; fail after `within` s (generous: shared CPU)."""
    deadline = time.monotonic() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


@dataclass
class Recorder:
    """A queue handler that records deliveries; `script` maps a payload to outcomes consumed in order.

    An outcome is an exception instance to raise, a float to sleep that long first, or None for success.
    """

    deliveries: list[Delivery] = field(default_factory=list)
    script: dict[bytes, list[Any]] = field(default_factory=dict)
    calls: list[Delivery] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> None:
        self.calls.append(delivery)
        outcomes = self.script.get(delivery.payload)
        outcome = outcomes.pop(0) if outcomes else None
        if isinstance(outcome, float):
            await asyncio.sleep(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        self.deliveries.append(delivery)

    def payloads(self) -> list[bytes]:
        return [d.payload for d in self.deliveries]

    def seqs(self, partition: int | None = None) -> list[int]:
        return [d.seq for d in self.deliveries if partition is None or d.partition == partition]


def spawn_child(*args: str) -> subprocess.Popen[str]:
    """Start tests/outbox/worker_child.py with `args`; it prints READY once its scheduler runs."""
    return subprocess.Popen(
        [sys.executable, str(CHILD_SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def wait_ready(child: subprocess.Popen[str], within: float = 30.0) -> None:
    assert child.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), within)
    if line.strip() != "READY":
        _, err = child.communicate(timeout=10)
        raise AssertionError(f"child did not start: {line!r}\n{err}")


async def wait_exit(child: subprocess.Popen[str], within: float = 30.0) -> int:
    return await asyncio.wait_for(asyncio.to_thread(child.wait), within)


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
