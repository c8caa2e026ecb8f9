"""Fixtures for the provider adapter tests: the fake OpenAI/Azure server and provider configs."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
from fakes.openai_server import DEFAULT_API_KEY, FakeOpenAI

from minichat_host.config import ProviderConfig


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def responses_config(base_url: str, **overrides: object) -> ProviderConfig:
    fields: dict[str, object] = {
        "kind": "openai_responses",
        "base_url": base_url,
        "api_key": DEFAULT_API_KEY,
        "read_timeout_seconds": 5.0,
        "connect_timeout_seconds": 2.0,
    }
    fields.update(overrides)
    return ProviderConfig(**fields)  # type: ignore[arg-type]


def chat_config(base_url: str, **overrides: object) -> ProviderConfig:
    return responses_config(base_url, kind="openai_chat", **overrides)


@pytest.fixture
def refused_url() -> str:
    """A loopback URL nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
