"""CLI test helpers: a config file, real dead letters, and running `minichat` on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from minichat_host.cli import main
from minichat_host.config import OutboxConfig
from minichat_host.db.engine import connect_database, dialect_name
from minichat_host.outbox import Delivery, Outbox, OutboxMetrics
from minichat_host.plugins.errors import PermanentError

QUEUE = "test.cli"
PARTITIONS = 4


def write_config(directory: Path, url: str) -> str:
    path = directory / "minichat.yaml"
    path.write_text(yaml.safe_dump({"database": {"url": url}}), encoding="utf-8")
    return str(path)


def outbox_config() -> OutboxConfig:
    return OutboxConfig(lease_seconds=30.0, poll_interval_seconds=0.05, vacuum_interval_seconds=3600.0)


async def _reject(delivery: Delivery) -> None:
    raise PermanentError(f"refused {delivery.payload.decode()}")


async def make_dead_letters(url: str, count: int) -> None:
    """Enqueue `count` messages (payload `{"n": i}`, keys spread over the partitions) and let a handler
    that refuses every one of them turn them into dead letters, as a failing plugin would."""
    database = await connect_database(url)
    try:
        outbox = Outbox(
            database, outbox_config(), dialect=dialect_name(url), metrics=OutboxMetrics(CollectorRegistry())
        )
        outbox.register_queue(QUEUE, _reject, partitions=PARTITIONS, timeout=5.0, batch_size=100)
        await outbox.ensure_queues()
        async with outbox.transaction() as tx:
            for n in range(count):
                await tx.enqueue(QUEUE, f"key-{n % 7}", {"n": n})
        await outbox.run_once()
    finally:
        await database.disconnect()


async def deliver_all(url: str) -> list[Delivery]:
    """Run one scheduler pass with a handler that accepts everything; the deliveries in order."""
    delivered: list[Delivery] = []

    async def accept(delivery: Delivery) -> None:
        delivered.append(delivery)

    database = await connect_database(url)
    try:
        outbox = Outbox(
            database, outbox_config(), dialect=dialect_name(url), metrics=OutboxMetrics(CollectorRegistry())
        )
        outbox.register_queue(QUEUE, accept, partitions=PARTITIONS, timeout=5.0, batch_size=100)
        await outbox.run_once()
    finally:
        await database.disconnect()
    return delivered


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`minichat ARGV` in-process (stdout and stderr captured: not a terminal); argparse exits too."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@dataclass
class Terminal:
    code: int
    stdout: str
    stderr: str  # everything written to the terminal (stderr)


def run_on_terminal(argv: Sequence[str], *, timeout: float = 120.0) -> Terminal:
    """`python -m minichat_host ARGV` with stderr on a pseudo-terminal (100 columns) and stdout on a pipe."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    child = subprocess.Popen(
        [sys.executable, "-m", "minichat_host", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"minichat {' '.join(argv)} did not finish within {timeout}s")
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone (the child exited)
                break
            if not data:
                break
            chunks.append(data)
        assert child.stdout is not None
        stdout = child.stdout.read().decode()
        code = child.wait(timeout=timeout)
    finally:
        os.close(master)
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    return Terminal(code, stdout, b"".join(chunks).decode(errors="replace"))


def has_bar(text: str) -> bool:
    """tqdm's bar: redrawn in place with carriage returns, a percentage and a `|` frame."""
    return "\r" in text.replace("\r\n", "\n") and "%|" in text
