"""Provider construction from config: lazy, cached, validated, closed on shutdown."""

from __future__ import annotations

import pytest
from fakes.openai_server import FakeOpenAI
from fakes.provider_configs import chat_config, responses_config

from minichat_host.config import ProviderConfig, parse_config
from minichat_host.plugins.types import SearchHit
from minichat_host.providers.base import (
    Cell,
    Citations,
    CodeInterpreterTool,
    FileSearchTool,
    InputMessage,
    InputText,
    LocalSearch,
    ProviderError,
    ProviderRegistry,
    ProviderRequest,
    TextDelta,
    ToolEvent,
    UnknownProviderError,
    build_provider,
)
from minichat_host.providers.local import LocalProvider
from minichat_host.providers.openai_chat import OpenAIChatProvider
from minichat_host.providers.openai_responses import OpenAIResponsesProvider

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


async def test_client_side_search_is_wired_per_provider(fake: FakeOpenAI) -> None:
    """Each provider searches its own storage: the factory is asked per provider id."""
    asked: list[str] = []
    searched: list[str] = []

    def search_for(provider_id: str) -> LocalSearch | None:
        asked.append(provider_id)
        if provider_id != "local":
            return None  # e.g. a provider whose files live on OpenAI: nothing to search locally

        async def search(
            tenant_id: str, vector_store_id: str, query: str, max_results: int
        ) -> list[SearchHit]:
            searched.append(vector_store_id)
            return [SearchHit(attachment_id="a", filename="a.txt", snippet="found it")]

        return search

    registry = ProviderRegistry(
        {"local": ProviderConfig(kind="local", auth="none"), "vllm": chat_config(fake.base_url)},
        local_search_for=search_for,
    )
    with_tool = ProviderRequest(
        model="m",
        input=[InputMessage(role="user", content=[InputText(text="hi")])],
        tools=[FileSearchTool(vector_store_ids=["vs-1"])],
    )
    try:
        local_events = [e async for e in registry.get("local").stream(with_tool, tenant_id="t")]
        chat_events = [e async for e in registry.get("vllm").stream(with_tool, tenant_id="t")]
    finally:
        await registry.aclose()
    assert asked == ["local", "vllm"] and searched == ["vs-1"]
    assert any(isinstance(e, Citations) for e in local_events)
    assert not any(isinstance(e, ToolEvent | Citations) for e in chat_events)


async def test_one_search_and_sheet_reader_for_every_provider() -> None:
    async def search(tenant_id: str, vector_store_id: str, query: str, max_results: int) -> list[SearchHit]:
        return [SearchHit(attachment_id="a", filename="a.txt", snippet="shared")]

    async def read(tenant_id: str, file_id: str) -> list[list[Cell]]:
        return [["x"], [1], [2]]

    registry = ProviderRegistry(
        {"local": ProviderConfig(kind="local", auth="none")}, local_search=search, local_sheet_reader=read
    )
    request = ProviderRequest(
        model="m",
        input=[InputMessage(role="user", content=[InputText(text="hi")])],
        tools=[FileSearchTool(vector_store_ids=["vs"]), CodeInterpreterTool(file_ids=["f"])],
    )
    events = [e async for e in registry.get("local").stream(request, tenant_id="t")]
    await registry.aclose()
    assert ToolEvent(phase="done", name="code_interpreter", details={"output": "rows=2\nsum(x)=3"}) in events
    assert any(isinstance(e, Citations) for e in events)
