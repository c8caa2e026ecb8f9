"""Provider construction from config: lazy, cached, validated, closed on shutdown."""

from __future__ import annotations

import pytest
from fakes.openai_server import FakeOpenAI

from minichat_host.config import ProviderConfig, parse_config
from minichat_host.providers.base import (
    InputMessage,
    InputText,
    ProviderError,
    ProviderRegistry,
    ProviderRequest,
    TextDelta,
    UnknownProviderError,
    build_provider,
)
from minichat_host.providers.local import LocalProvider
from minichat_host.providers.openai_chat import OpenAIChatProvider
from minichat_host.providers.openai_responses import OpenAIResponsesProvider

from .conftest import chat_config, responses_config

REQUEST = ProviderRequest(model="m", input=[InputMessage(role="user", content=[InputText(text="hi")])])


def test_embedded_default_is_the_local_provider() -> None:
    registry = ProviderRegistry(parse_config({}).providers)
    assert registry.provider_ids() == ["local"]
    assert isinstance(registry.get("local"), LocalProvider)


async def test_providers_are_built_once_on_first_use_and_closed_on_shutdown(fake: FakeOpenAI) -> None:
    registry = ProviderRegistry(
        {
            "local": ProviderConfig(kind="local", auth="none"),
            "openai": responses_config(fake.base_url),
            "vllm": chat_config(fake.base_url),
        }
    )
    openai = registry.get("openai")
    assert isinstance(openai, OpenAIResponsesProvider)
    assert registry.get("openai") is openai
    assert isinstance(registry.get("vllm"), OpenAIChatProvider)
    events = [e async for e in openai.stream(REQUEST, tenant_id="t")]
    assert any(isinstance(e, TextDelta) for e in events)
    await registry.aclose()
    with pytest.raises(ProviderError):
        registry.get("local")
    with pytest.raises(ProviderError):  # the built adapter's session is closed too
        [e async for e in openai.stream(REQUEST, tenant_id="t")]


def test_unknown_provider() -> None:
    registry = ProviderRegistry({})
    with pytest.raises(UnknownProviderError) as caught:
        registry.get("nope")
    assert caught.value.code == "provider_error" and "nope" in caught.value.message


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (ProviderConfig(kind="openai_responses"), "$.providers.p.base_url is required"),
        (ProviderConfig(kind="openai_chat", base_url="ftp://x"), "must start with http"),
        (ProviderConfig(kind="openai_responses", base_url="http://x", api_path="v1/responses"), "api_path"),
        (
            ProviderConfig(
                kind="openai_responses",
                base_url="http://x",
                tenant_overrides={"t1": {"base_ur1": "http://y"}},
            ),
            "tenant_overrides.t1: unknown key(s) ['base_ur1']",
        ),
    ],
)
def test_bad_provider_config_fails_at_start(cfg: ProviderConfig, message: str) -> None:
    with pytest.raises(ValueError, match=r".*") as caught:
        ProviderRegistry({"p": cfg})
    assert message in str(caught.value)
    with pytest.raises(ValueError):
        build_provider("p", cfg)
