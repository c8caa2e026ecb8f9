"""`minichat serve` as a real process: embedded defaults, /health, and a graceful SIGTERM (exit 0, in-flight
stream finished)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from aiohttp import web

from minichat_host.cli.serve import KEEPALIVE_TIMEOUT_SECONDS, app_runner
from minichat_host.config import load_config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(base: str, proc: subprocess.Popen[bytes]) -> dict[str, str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "server exited"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                body: dict[str, str] = json.loads(resp.read())
                return body
        except OSError:
            time.sleep(0.2)
    raise AssertionError("server did not become healthy")


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_serve_embedded_defaults_and_graceful_sigterm(tmp_path: Path, event_loop: str) -> None:
    port = _free_port()
    config = tmp_path / "minichat.yaml"
    # Embedded defaults, plus a slow local model so a stream is still running when SIGTERM arrives.
    server = f"server:\n  port: {port}\n  event_loop: {event_loop}\n"
    config.write_text(f"{server}streaming:\n  local_token_delay_seconds: 0.05\n")
    env = {**os.environ, "MINICHAT_HOME": str(tmp_path / "home"), "MINICHAT_CONFIG": str(config)}
    env.pop("MINICHAT_LOAD_PLUGINS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "minichat_host", "serve"], env=env, stderr=subprocess.PIPE, cwd=tmp_path
    )
    try:
        base = f"http://127.0.0.1:{port}"
        health = _wait_healthy(base, proc)
        assert health["status"] == "healthy"
        assert (tmp_path / "home" / "minichat.db").exists()

        create = urllib.request.Request(
            f"{base}/mini-chat/v1/chats", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(create, timeout=10) as resp:
            assert resp.status == 201
            chat_id = json.loads(resp.read())["id"]
        send = urllib.request.Request(
            f"{base}/mini-chat/v1/chats/{chat_id}/messages:stream",
            data=json.dumps({"content": " ".join(f"w{i}" for i in range(30))}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(send, timeout=30) as stream:
            first = stream.readline()
            assert first.startswith(b"event: stream_started")
            proc.send_signal(signal.SIGTERM)  # mid-stream: the stream must still finish with `done`
            rest = stream.read().decode()
        events = [line.split(": ", 1)[1] for line in rest.splitlines() if line.startswith("event: ")]
        assert events[-1] == "done", events
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_the_runner_keeps_run_apps_settings(tmp_path: Path) -> None:
    """`minichat serve` builds its own runner (for its listener): idle keep-alive connections still close
    after 75 s, not aiohttp's hour, and the shutdown timeout is the configured one."""
    config_path = tmp_path / "minichat.yaml"
    config_path.write_text("server: {port: 0, shutdown_timeout_seconds: 7}\n", encoding="utf-8")
    runner = app_runner(web.Application(), load_config(str(config_path)))
    await runner.setup()
    try:
        assert runner.server is not None
        assert runner.server._kwargs["keepalive_timeout"] == KEEPALIVE_TIMEOUT_SECONDS == 75.0
        assert runner.server._kwargs["access_log"] is None
        assert runner._shutdown_timeout == 7.0
    finally:
        await runner.cleanup()
