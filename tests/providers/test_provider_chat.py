"""The Chat Completions adapter against the fake server: text stream, usage chunk, client-side file search
and every fault."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from fakes.openai_server import FakeOpenAI, Script
from fakes.provider_configs import chat_config

from minichat_host.plugins.types import ApiParams, SearchHit
from minichat_host.providers.base import (
    Citations,
    Completed,
    FileSearchTool,
    InputImage,
    InputMessage,
    InputText,
    OutputText,
    ProviderError,
    ProviderRequest,
    StreamEvent,
    TextDelta,
    ToolEvent,
    WebSearchTool,
)
from minichat_host.providers.openai_chat import OpenAIChatProvider, _chunk_parts, event_parts
from minichat_host.providers.sse import SseEvent
from minichat_host.providers.upstream import decode_event_json

pytestmark = pytest.mark.both_loops  # the provider client on asyncio's loop and on uvloop's

TENANT = "tenant-1"


def request(text: str = "Hello?", **fields: object) -> ProviderRequest:
    return ProviderRequest(
        model="llama-test",
        input=[InputMessage(role="user", content=[InputText(text=text)])],
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIChatProvider]:
    adapter = OpenAIChatProvider("vllm", chat_config(fake.base_url))
    yield adapter
    await adapter.aclose()


async def collect(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in stream]


async def failure(stream: AsyncIterator[StreamEvent]) -> tuple[list[StreamEvent], ProviderError]:
    seen: list[StreamEvent] = []
    with pytest.raises(ProviderError) as caught:
        async for event in stream:
            seen.append(event)
    return seen, caught.value


async def test_text_deltas_in_order_and_usage_from_the_final_chunk(
    fake: FakeOpenAI, provider: OpenAIChatProvider
) -> None:
    tokens = ["Hi", " ", "there", "!", " 😀"]
    fake.script(Script(tokens=tokens, token_gap_ms=2, input_tokens=9, cached_tokens=4, reasoning_tokens=1))
    events = await collect(provider.stream(request(), tenant_id=TENANT))
    assert [e.text for e in events if isinstance(e, TextDelta)] == tokens
    completed = events[-1]
    assert isinstance(completed, Completed)
    assert completed.usage_reported and not completed.incomplete
    usage = completed.usage
    assert (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_input_tokens,
        usage.reasoning_tokens,
    ) == (
        9,
        len(tokens),
        4,
        1,
    )
    assert completed.response_id is not None and completed.response_id.startswith("chatcmpl-")


async def test_request_body_uses_the_chat_completions_shape(
    fake: FakeOpenAI, provider: OpenAIChatProvider
) -> None:
    req = ProviderRequest(
        model="llama-test",
        instructions="Be kind.",
        input=[
            InputMessage(role="user", content=[InputText(text="one"), InputText(text="two")]),
            InputMessage(role="assistant", content=[OutputText(text="reply")]),
            InputMessage(
                role="user",
                content=[
                    InputText(text="look"),
                    InputImage(image_url="data:image/png;base64,AAAA"),
                    InputImage(file_id="file-only-openai-knows"),
                ],
            ),
        ],
        max_output_tokens=64,
        tools=[WebSearchTool()],  # hosted tools do not exist here: ignored
        api_params=ApiParams(temperature=0.1, presence_penalty=0.5, stop=["END"], extra_body={"top_k": 20}),
        user="tenant-1:user-1",
        metadata={"ignored": "yes"},
    )
    await collect(provider.stream(req, tenant_id=TENANT))
    record = fake.last("chat")
    assert record.path == "/v1/chat/completions"
    assert record.headers["authorization"] == "Bearer sk-test"
    assert record.body == {
        "model": "llama-test",
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "one\n\ntwo"},
            {"role": "assistant", "content": "reply"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
        "temperature": 0.1,
        "presence_penalty": 0.5,
        "stop": ["END"],
        "user": "tenant-1:user-1",
        "top_k": 20,
    }


async def test_custom_api_path_and_api_key_auth(fake: FakeOpenAI) -> None:
    adapter = OpenAIChatProvider(
        "gw", chat_config(fake.base_url, api_path="/openai/v1/chat/completions", auth="api-key")
    )
    try:
        await collect(adapter.stream(request(), tenant_id=TENANT))
    finally:
        await adapter.aclose()
    record = fake.last("chat")
    assert record.path == "/openai/v1/chat/completions"
    assert record.headers["api-key"] == "sk-test" and "authorization" not in record.headers


async def test_length_finish_is_incomplete(fake: FakeOpenAI, provider: OpenAIChatProvider) -> None:
    fake.script(Script(tokens=["a ", "b ", "c "]))
    events = await collect(provider.stream(request(max_output_tokens=2), tenant_id=TENANT))
    completed = events[-1]
    assert isinstance(completed, Completed)
    assert completed.incomplete and completed.incomplete_reason == "length"
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a ", "b "]


async def test_servers_without_usage_get_an_estimate(fake: FakeOpenAI, provider: OpenAIChatProvider) -> None:
    fake.script(Script(text="eight by", omit_usage=True))
    completed = (await collect(provider.stream(request("abcdefgh"), tenant_id=TENANT)))[-1]
    assert isinstance(completed, Completed)
    assert not completed.usage_reported
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (2, 2)


async def test_client_side_file_search_with_local_storage(fake: FakeOpenAI) -> None:
    calls: list[tuple[str, str, str, int]] = []

    async def search(tenant_id: str, vector_store_id: str, query: str, max_results: int) -> list[SearchHit]:
        calls.append((tenant_id, vector_store_id, query, max_results))
        return [
            SearchHit(
                attachment_id="att-1", filename="stored-1.txt", snippet="Paris is the capital.", score=0.4
            ),
            SearchHit(attachment_id="att-2", filename="stored-2.txt", snippet="Lyon is large.", score=0.9),
        ]

    adapter = OpenAIChatProvider("vllm", chat_config(fake.base_url), local_search=search)
    req = request(
        "capital of France?",
        tools=[FileSearchTool(vector_store_ids=["vs-local"], max_num_results=3)],
        citation_titles={"att-1": "france.txt"},
    )
    try:
        events = await collect(adapter.stream(req, tenant_id=TENANT))
    finally:
        await adapter.aclose()
    assert calls == [(TENANT, "vs-local", "capital of France?", 3)]
    assert events[:2] == [
        ToolEvent(phase="start", name="file_search"),
        ToolEvent(phase="done", name="file_search", details={"files_searched": 2}),
    ]
    citations = events[-2]
    assert isinstance(citations, Citations)
    assert [(c.attachment_id, c.title) for c in citations.items] == [
        ("att-2", "stored-2.txt"),
        ("att-1", "france.txt"),
    ]
    system = fake.last("chat").body["messages"][0]
    assert system["role"] == "system"
    assert "[1] stored-2.txt: Lyon is large." in system["content"]
    assert "[2] france.txt: Paris is the capital." in system["content"]


async def test_complete_is_non_streaming(fake: FakeOpenAI, provider: OpenAIChatProvider) -> None:
    fake.script(Script(text="<summary>s</summary>", input_tokens=30))
    result = await provider.complete(request(), tenant_id=TENANT)
    assert result.text == "<summary>s</summary>"
    assert result.usage.input_tokens == 30
    body = fake.last("chat").body
    assert body["stream"] is False and "stream_options" not in body


# --- faults -----------------------------------------------------------------------------------------
async def test_connection_refused(refused_url: str) -> None:
    adapter = OpenAIChatProvider("vllm", chat_config(refused_url))
    try:
        _, error = await failure(adapter.stream(request(), tenant_id=TENANT))
    finally:
        await adapter.aclose()
    assert error.code == "provider_error"


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (Script.server_error(), "provider_error"),
        (Script.rate_limited(), "rate_limited"),
        (Script.context_length_exceeded(), "context_length_exceeded"),
        (
            Script.http_error(
                400, message="This model's maximum context length is 4096 tokens. However, you requested 5000"
            ),
            "context_length_exceeded",
        ),
    ],
)
async def test_http_errors(fake: FakeOpenAI, provider: OpenAIChatProvider, script: Script, code: str) -> None:
    fake.script(script)
    seen, error = await failure(provider.stream(request(), tenant_id=TENANT))
    assert seen == [] and error.code == code


@pytest.mark.parametrize(
    "script",
    [
        Script(fail_after=2, fail_mode="error_event"),
        Script(fail_after=2, fail_mode="drop"),
        Script(fail_after=2, fail_mode="eof"),
        Script(malformed_after=2),
    ],
    ids=["error-chunk", "drop", "eof-without-done", "malformed"],
)
async def test_failures_mid_stream(fake: FakeOpenAI, provider: OpenAIChatProvider, script: Script) -> None:
    script.tokens = ["one ", "two ", "three "]
    fake.script(script)
    seen, error = await failure(provider.stream(request(), tenant_id=TENANT))
    assert seen == [TextDelta(text="one "), TextDelta(text="two ")]
    assert error.code == "provider_error"


async def test_error_chunk_codes_are_mapped(fake: FakeOpenAI, provider: OpenAIChatProvider) -> None:
    fake.script(
        Script(fail_after=1, fail_mode="error_event", error_code="rate_limit_exceeded", error_message="busy")
    )
    _, error = await failure(provider.stream(request(), tenant_id=TENANT))
    assert error.code == "rate_limited"


@pytest.mark.parametrize(
    "script", [Script(stall_before_headers=True), Script(tokens=["a ", "b "], stall_at=1)]
)
async def test_stall_past_read_timeout(fake: FakeOpenAI, script: Script) -> None:
    adapter = OpenAIChatProvider("vllm", chat_config(fake.base_url, read_timeout_seconds=0.3))
    fake.script(script)
    try:
        _, error = await failure(adapter.stream(request(), tenant_id=TENANT))
    finally:
        await adapter.aclose()
    assert error.code == "provider_timeout"
    assert await fake.last("chat").wait_finished() == "client_disconnected"


async def test_cancelling_the_consumer_closes_the_upstream_connection(
    fake: FakeOpenAI, provider: OpenAIChatProvider
) -> None:
    fake.script(Script(tokens=[f"t{i} " for i in range(1000)], token_gap_ms=20))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(request(), tenant_id=TENANT):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert await fake.last("chat").wait_finished() == "client_disconnected"


async def test_refusals_are_relayed_as_text(fake: FakeOpenAI, provider: OpenAIChatProvider) -> None:
    fake.script(Script(tokens=[], refusal=["No, ", "sorry."]))
    events = await collect(provider.stream(request(), tenant_id=TENANT))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["No, ", "sorry."]
    assert isinstance(events[-1], Completed)


_CHUNKS = [
    '{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}',
    '{"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null}]}',
    '{"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    '{"id":"c1","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,'
    '"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":1}}}',
    '{"choices":[{"index":1,"delta":{"content":"other choice"}},{"delta":{"refusal":"no","content":"x"}}]}',
    '{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":""}],"usage":null}',
    # Off the usual shape: the lenient walk decides.
    '{"id":7,"choices":[{"index":0,"delta":{"content":"a"}}]}',
    '{"choices":{"index":0},"usage":[1]}',
    '{"choices":[{"index":true,"delta":"text"},{"index":0.0,"delta":{"content":5}},"junk"]}',
    '{"choices":[{"index":-1,"delta":{"content":"negative index counts as 0"}}]}',
    '{"choices":[{"index":0,"delta":{"content":"a"}}],"usage":{"prompt_tokens":"7"}}',
    '{"error":{"code":"rate_limit_exceeded","message":"slow down"}}',
    '{"error":"plain text error"}',
    '{"error":null,"choices":[{"index":0,"delta":{"content":"ok"}}]}',
    "[1, 2]",
    "not json",
]


@pytest.mark.parametrize("data", _CHUNKS)
def test_typed_chunk_decoding_equals_the_lenient_walk(data: str) -> None:
    event = SseEvent("message", data)
    try:
        expected = _chunk_parts(decode_event_json(event))
    except ProviderError as exc:
        with pytest.raises(ProviderError) as raised:
            event_parts(event)
        assert (raised.value.code, raised.value.message) == (exc.code, exc.message)
        return
    assert event_parts(event) == expected
