"""`ProviderConfig`s pointing at a running fake (tests only)."""

from __future__ import annotations

from fakes.openai_server import DEFAULT_API_KEY
from minichat_host.config import ProviderConfig


def responses_config(base_url: str, **overrides: object) -> ProviderConfig:
    """An `openai_responses` provider on `base_url` with the fake's key and short timeouts."""
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
    """An `openai_chat` provider on `base_url`."""
    return responses_config(base_url, kind="openai_chat", **overrides)
