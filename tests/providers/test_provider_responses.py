"""The Responses API adapter against the fake OpenAI / Azure server: events, request shape and every fault."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from fakes.openai_server import (
    CodeInterpreterScript,
    FakeOpenAI,
    FileSearchScript,
    Script,
    WebSearchScript,
)
from fakes.provider_configs import responses_config

from minichat_host.plugins.types import ApiParams
from minichat_host.providers.base import (
    Citations,
    CodeInterpreterTool,
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
from minichat_host.providers.openai_responses import OpenAIResponsesProvider, attachment_id_from_filename

pytestmark = pytest.mark.both_loops  # the provider client on asyncio's loop and on uvloop's

TENANT = "tenant-1"
CHAT_ID = "0b6f4b1e-3f0c-4d7c-9d55-1f2a3b4c5d6e"
ATTACHMENT_ID = "6f1c2d3e-4b5a-4c6d-8e7f-90a1b2c3d4e5"


def request(text: str = "What is in my files?", **fields: object) -> ProviderRequest:
    return ProviderRequest(
        model="gpt-test",
        input=[InputMessage(role="user", content=[InputText(text=text)])],
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
async def provider(fake: FakeOpenAI) -> AsyncIterator[OpenAIResponsesProvider]:
    adapter = OpenAIResponsesProvider("openai", responses_config(fake.base_url))
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


# --- happy path -------------------------------------------------------------------------------------
async def test_text_deltas_arrive_in_order_one_event_per_upstream_delta(
    fake: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    tokens = ["Hel", "lo", ",", " wor", "ld", "!", " ", "😀"]
    fake.script(Script(tokens=tokens, token_gap_ms=2, input_tokens=12, cached_tokens=5, reasoning_tokens=3))
    events = await collect(provider.stream(request(), tenant_id=TENANT))
    assert [e.text for e in events if isinstance(e, TextDelta)] == tokens
    completed = events[-1]
    assert isinstance(completed, Completed)
    assert not completed.incomplete and completed.usage_reported
    assert completed.usage.input_tokens == 12
    assert completed.usage.output_tokens == len(tokens)
    assert completed.usage.cache_read_input_tokens == 5
    assert completed.usage.reasoning_tokens == 3
    assert completed.response_id is not None and completed.response_id.startswith("resp_")
    assert fake.last("responses").outcome == "completed"


async def test_deltas_are_relayed_before_the_stream_ends(
    fake: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    fake.script(Script(tokens=["first ", "second"], token_gap_ms=30_000))
    stream = provider.stream(request(), tenant_id=TENANT)
    try:
        first = await asyncio.wait_for(anext(stream), 10)
        assert first == TextDelta(text="first ")  # not held back until the (30 s away) next token
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_request_body_and_headers(fake: FakeOpenAI, provider: OpenAIResponsesProvider) -> None:
    req = ProviderRequest(
        model="gpt-test",
        instructions="Be brief.",
        input=[
            InputMessage(role="user", content=[InputText(text="hi")]),
            InputMessage(role="assistant", content=[OutputText(text="hello")]),
            InputMessage(
                role="user",
                content=[
                    InputText(text="and this image?"),
                    InputImage(image_url="data:image/png;base64,AAAA"),
                    InputImage(file_id="file-img"),
                ],
            ),
        ],
        max_output_tokens=256,
        max_tool_calls=2,
        tools=[
            FileSearchTool(vector_store_ids=["vs_1"], max_num_results=5),
            WebSearchTool(search_context_size="low"),
            CodeInterpreterTool(file_ids=["file-x"]),
        ],
        api_params=ApiParams(
            temperature=0.2, top_p=0.9, reasoning_effort="low", stop=["x"], extra_body={"seed": 7}
        ),
        user="tenant-1:user-1",
        metadata={"request_id": "r1"},
    )
    fake.script(Script(text="ok"))
    await collect(provider.stream(req, tenant_id=TENANT))
    record = fake.last("responses")
    assert record.path == "/v1/responses"
    assert record.headers["authorization"] == "Bearer sk-test"
    assert record.headers["accept"] == "text/event-stream"
    assert record.body == {
        "model": "gpt-test",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "and this image?"},
                    {"type": "input_image", "detail": "auto", "image_url": "data:image/png;base64,AAAA"},
                    {"type": "input_image", "detail": "auto", "file_id": "file-img"},
                ],
            },
        ],
        "stream": True,
        "store": False,
        "instructions": "Be brief.",
        "max_output_tokens": 256,
        "tools": [
            {"type": "file_search", "vector_store_ids": ["vs_1"], "max_num_results": 5},
            {"type": "web_search", "search_context_size": "low"},
            {"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["file-x"]}},
        ],
        "max_tool_calls": 2,
        "include": ["file_search_call.results", "code_interpreter_call.outputs"],
        "user": "tenant-1:user-1",
        "metadata": {"request_id": "r1"},
        "temperature": 0.2,
        "top_p": 0.9,
        "reasoning": {"effort": "low"},
        "seed": 7,
    }


async def test_file_search_tool_events_and_citations_map_attributes_to_attachment_ids(
    fake: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    results = [
        {
            "file_id": "file-a",
            "filename": f"{CHAT_ID}_{ATTACHMENT_ID}.pdf",
            "score": 0.87,
            "text": "Quarterly revenue grew 12 percent.",
            "attributes": {"attachment_id": "att-from-attributes"},
        },
        {  # no attributes: the attachment id comes from the stored filename
            "file_id": "file-b",
            "filename": f"{CHAT_ID}_{ATTACHMENT_ID}.docx",
            "score": 0.5,
            "text": "Second file.",
        },
    ]
    fake.script(Script(text="Revenue grew.", tools=[FileSearchScript(results=results)]))
    req = request(
        tools=[FileSearchTool(vector_store_ids=["vs_1"])],
        citation_titles={"att-from-attributes": "report.pdf"},
    )
    events = await collect(provider.stream(req, tenant_id=TENANT))
    tools = [e for e in events if isinstance(e, ToolEvent)]
    assert tools == [
        ToolEvent(phase="start", name="file_search", details={}),
        ToolEvent(phase="done", name="file_search", details={"files_searched": 2}),
    ]
    assert events.index(tools[-1]) < next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    citations = events[-2]
    assert isinstance(citations, Citations)
    first, second = citations.items
    assert (first.source, first.attachment_id, first.title, first.score) == (
        "file",
        "att-from-attributes",
        "report.pdf",
        0.87,
    )
    assert first.snippet == "Quarterly revenue grew 12 percent."
    assert (second.attachment_id, second.title) == (ATTACHMENT_ID, f"{CHAT_ID}_{ATTACHMENT_ID}.docx")
    assert isinstance(events[-1], Completed)


async def test_web_search_url_citations(fake: FakeOpenAI, provider: OpenAIResponsesProvider) -> None:
    sources = [("https://example.com/a", "Example A"), ("https://example.org/b", "Example B")]
    fake.script(Script(text="News today.", tools=[WebSearchScript(query="news", sources=sources)]))
    events = await collect(provider.stream(request(tools=[WebSearchTool()]), tenant_id=TENANT))
    assert [e for e in events if isinstance(e, ToolEvent)] == [
        ToolEvent(phase="start", name="web_search"),
        ToolEvent(phase="done", name="web_search"),
    ]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    citations = next(e for e in events if isinstance(e, Citations))
    assert [(c.source, c.url, c.title) for c in citations.items] == [
        ("web", "https://example.com/a", "Example A"),
        ("web", "https://example.org/b", "Example B"),
    ]
    for citation in citations.items:
        assert citation.span is not None
        assert text[citation.span.start : citation.span.end] == citation.snippet == f"({citation.title})"


async def test_code_interpreter_done_carries_the_output(
    fake: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    fake.script(
        Script(text="The total is 42.", tools=[CodeInterpreterScript(code="print(40+2)", output="42")])
    )
    events = await collect(
        provider.stream(request(tools=[CodeInterpreterTool(file_ids=["f"])]), tenant_id=TENANT)
    )
    assert [e for e in events if isinstance(e, ToolEvent)] == [
        ToolEvent(phase="start", name="code_interpreter"),
        ToolEvent(phase="done", name="code_interpreter", details={"output": "42"}),
    ]
    assert not any(isinstance(e, Citations) for e in events)


async def test_uploaded_files_are_cited_after_a_real_upload_flow(
    fake: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    """The fake's automatic file_search cites what was uploaded and indexed, with its attributes."""
    file_id = fake.seed_file(f"{CHAT_ID}_{ATTACHMENT_ID}.txt", b"The sky is blue.")
    vector_store_id = fake.seed_vector_store({file_id: {"attachment_id": ATTACHMENT_ID}})
    req = request(tools=[FileSearchTool(vector_store_ids=[vector_store_id])])
    events = await collect(provider.stream(req, tenant_id=TENANT))
    citations = next(e for e in events if isinstance(e, Citations))
    assert [(c.attachment_id, c.snippet) for c in citations.items] == [(ATTACHMENT_ID, "The sky is blue.")]


async def test_incomplete_is_a_completion(fake: FakeOpenAI, provider: OpenAIResponsesProvider) -> None:
    fake.script(Script(tokens=["a ", "b ", "c ", "d "]))
    events = await collect(provider.stream(request(max_output_tokens=2), tenant_id=TENANT))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a ", "b "]
    completed = events[-1]
    assert isinstance(completed, Completed)
    assert completed.incomplete and completed.incomplete_reason == "max_output_tokens"
    assert completed.usage.output_tokens == 2


async def test_missing_usage_is_estimated_and_flagged(
    fake: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    fake.script(Script(text="twelve bytes", omit_usage=True))
    completed = (await collect(provider.stream(request("abcd" * 4), tenant_id=TENANT)))[-1]
    assert isinstance(completed, Completed)
    assert not completed.usage_reported
    assert completed.usage.output_tokens == 3  # ceil(12 / 4)
    assert completed.usage.input_tokens == 4  # ceil(16 / 4)


async def test_complete_is_non_streaming(fake: FakeOpenAI, provider: OpenAIResponsesProvider) -> None:
    fake.script(Script(text="<summary>short</summary>", input_tokens=40))
    result = await provider.complete(request("summarize"), tenant_id=TENANT)
    assert result.text == "<summary>short</summary>"
    assert result.usage.input_tokens == 40 and result.usage.output_tokens == 1
    record = fake.last("responses")
    assert record.body["stream"] is False and record.headers["accept"] == "application/json"


async def test_complete_maps_errors(fake: FakeOpenAI, provider: OpenAIResponsesProvider) -> None:
    fake.script(Script.context_length_exceeded())
    with pytest.raises(ProviderError) as caught:
        await provider.complete(request(), tenant_id=TENANT)
    assert caught.value.code == "context_length_exceeded"


# --- Azure ------------------------------------------------------------------------------------------
async def test_azure_deployment_path_api_key_and_api_version(fake: FakeOpenAI) -> None:
    cfg = responses_config(
        fake.base_url,
        auth="api-key",
        api_path="/openai/deployments/{model}/responses",
        api_version="2025-03-01-preview",
    )
    adapter = OpenAIResponsesProvider("azure", cfg)
    try:
        events = await collect(adapter.stream(request(), tenant_id=TENANT))
    finally:
        await adapter.aclose()
    assert isinstance(events[-1], Completed)
    record = fake.last("responses")
    assert record.family == "azure"
    assert record.path == "/openai/deployments/gpt-test/responses"
    assert record.query == {"api-version": "2025-03-01-preview"}
    assert record.headers["api-key"] == "sk-test"
    assert "authorization" not in record.headers


async def test_azure_v1_path_sends_no_api_version(fake: FakeOpenAI) -> None:
    cfg = responses_config(
        fake.base_url, auth="api-key", api_path="/openai/v1/responses", api_version="2025-03-01"
    )
    adapter = OpenAIResponsesProvider("azure", cfg)
    try:
        await collect(adapter.stream(request(), tenant_id=TENANT))
    finally:
        await adapter.aclose()
    record = fake.last("responses")
    assert (record.path, record.query, record.family) == ("/openai/v1/responses", {}, "azure_v1")


async def test_azure_without_api_version_is_a_provider_error(fake: FakeOpenAI) -> None:
    adapter = OpenAIResponsesProvider(
        "azure",
        responses_config(fake.base_url, auth="api-key", api_path="/openai/deployments/{model}/responses"),
    )
    try:
        _, error = await failure(adapter.stream(request(), tenant_id=TENANT))
    finally:
        await adapter.aclose()
    assert (error.code, error.status) == ("provider_error", 404)


async def test_tenant_overrides_replace_base_url_and_key(fake: FakeOpenAI) -> None:
    other = FakeOpenAI(api_key="sk-tenant-b")
    await other.start()
    cfg = responses_config(
        fake.base_url,
        tenant_overrides={"tenant-b": {"base_url": other.base_url, "api_key": "sk-tenant-b"}},
    )
    adapter = OpenAIResponsesProvider("openai", cfg)
    try:
        await collect(adapter.stream(request(), tenant_id="tenant-b"))
        await collect(adapter.stream(request(), tenant_id="tenant-a"))
    finally:
        await adapter.aclose()
        await other.stop()
    assert other.last("responses").headers["authorization"] == "Bearer sk-tenant-b"
    assert fake.last("responses").headers["authorization"] == "Bearer sk-test"
    assert len(fake.by_op("responses")) == len(other.by_op("responses")) == 1


# --- faults -----------------------------------------------------------------------------------------
async def test_connection_refused(refused_url: str) -> None:
    adapter = OpenAIResponsesProvider("openai", responses_config(refused_url))
    try:
        _, error = await failure(adapter.stream(request(), tenant_id=TENANT))
    finally:
        await adapter.aclose()
    assert error.code == "provider_error" and "connect" in error.message


@pytest.mark.parametrize(
    ("script", "code", "status"),
    [
        (Script.server_error(), "provider_error", 500),
        (Script.http_error(503), "provider_error", 503),
        (Script.rate_limited(), "rate_limited", 429),
        (Script.context_length_exceeded(), "context_length_exceeded", 400),
        (Script.http_error(400, message="Invalid value for 'temperature'."), "provider_error", 400),
    ],
)
async def test_http_errors_before_the_first_token(
    fake: FakeOpenAI, provider: OpenAIResponsesProvider, script: Script, code: str, status: int
) -> None:
    fake.script(script)
    seen, error = await failure(provider.stream(request(), tenant_id=TENANT))
    assert seen == []
    assert (error.code, error.status) == (code, status)
    assert f"HTTP {status}" in error.message


async def test_wrong_key_is_a_provider_error(fake: FakeOpenAI) -> None:
    adapter = OpenAIResponsesProvider("openai", responses_config(fake.base_url, api_key="sk-wrong"))
    try:
        _, error = await failure(adapter.stream(request(), tenant_id=TENANT))
    finally:
        await adapter.aclose()
    assert (error.code, error.status) == ("provider_error", 401)


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (Script(fail_after=2), "provider_error"),
        (Script(fail_after=2, error_code="rate_limit_exceeded", error_message="slow down"), "rate_limited"),
        (Script(fail_after=2, fail_mode="error_event"), "provider_error"),
        (Script(fail_after=2, fail_mode="drop"), "provider_error"),
        (Script(fail_after=2, fail_mode="eof"), "provider_error"),
        (Script(malformed_after=2), "provider_error"),
    ],
)
async def test_failures_mid_stream_keep_the_text_so_far(
    fake: FakeOpenAI, provider: OpenAIResponsesProvider, script: Script, code: str
) -> None:
    script.tokens = ["one ", "two ", "three "]
    fake.script(script)
    seen, error = await failure(provider.stream(request(), tenant_id=TENANT))
    assert seen == [TextDelta(text="one "), TextDelta(text="two ")]
    assert error.code == code


@pytest.mark.parametrize(
    "script",
    [Script(stall_before_headers=True), Script(stall_at=0), Script(tokens=["a ", "b "], stall_at=1)],
    ids=["before-headers", "after-headers", "between-tokens"],
)
async def test_a_stall_past_the_read_timeout_is_provider_timeout(fake: FakeOpenAI, script: Script) -> None:
    adapter = OpenAIResponsesProvider("openai", responses_config(fake.base_url, read_timeout_seconds=0.3))
    fake.script(script)
    try:
        _, error = await failure(adapter.stream(request(), tenant_id=TENANT))
    finally:
        await adapter.aclose()
    assert error.code == "provider_timeout"
    # The fake sees the connection go away while it is still stalling.
    assert await fake.last("responses").wait_finished() == "client_disconnected"


async def test_slow_but_steady_tokens_do_not_time_out(fake: FakeOpenAI) -> None:
    """The read timeout bounds the gap between chunks, not the whole response."""
    adapter = OpenAIResponsesProvider("openai", responses_config(fake.base_url, read_timeout_seconds=1.0))
    fake.script(Script(tokens=[f"t{i} " for i in range(6)], token_gap_ms=250))
    try:
        events = await collect(adapter.stream(request(), tenant_id=TENANT))
    finally:
        await adapter.aclose()
    assert isinstance(events[-1], Completed)


async def test_cancelling_the_consumer_closes_the_upstream_connection(
    fake: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    fake.script(Script(tokens=[f"t{i} " for i in range(1000)], token_gap_ms=20))
    received: list[StreamEvent] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for event in provider.stream(request(), tenant_id=TENANT):
            received.append(event)
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    record = fake.last("responses")
    assert await record.wait_finished() == "client_disconnected"
    assert 0 < len(received) < 1000


async def test_closing_the_stream_early_closes_the_upstream_connection(
    fake: FakeOpenAI, provider: OpenAIResponsesProvider
) -> None:
    fake.script(Script(tokens=[f"t{i} " for i in range(1000)], token_gap_ms=20))
    async with contextlib.aclosing(provider.stream(request(), tenant_id=TENANT)) as stream:  # type: ignore[type-var]
        async for _ in stream:
            break
    assert await fake.last("responses").wait_finished() == "client_disconnected"


async def test_a_closed_provider_refuses_new_calls(fake: FakeOpenAI) -> None:
    adapter = OpenAIResponsesProvider("openai", responses_config(fake.base_url))
    await adapter.aclose()
    _, error = await failure(adapter.stream(request(), tenant_id=TENANT))
    assert error.code == "provider_error"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        (f"{CHAT_ID}_{ATTACHMENT_ID}.pdf", ATTACHMENT_ID),
        (f"{CHAT_ID}_{ATTACHMENT_ID}", ATTACHMENT_ID),
        ("report.pdf", None),
    ],
)
def test_attachment_id_from_stored_filename(filename: str, expected: str | None) -> None:
    assert attachment_id_from_filename(filename) == expected


async def test_refusals_are_relayed_as_text(fake: FakeOpenAI, provider: OpenAIResponsesProvider) -> None:
    fake.script(Script(tokens=[], refusal=["I can't ", "help with that."]))
    events = await collect(provider.stream(request(), tenant_id=TENANT))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["I can't ", "help with that."]
    assert isinstance(events[-1], Completed)
