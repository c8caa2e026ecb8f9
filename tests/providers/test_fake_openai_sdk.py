"""The fake speaks the real wire format: the official `openai` SDK talks to it unchanged."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
from fakes.openai_server import DEFAULT_API_KEY, FakeOpenAI, FileSearchScript, Script
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFileSearchToolCall,
    ResponseOutputTextAnnotationAddedEvent,
)
from openai.types.responses.response_output_text_annotation_added_event import AnnotationFileCitation

AZURE_VERSION = "2025-03-01-preview"
FAKE_SCRIPT = Path(__file__).resolve().parents[1] / "fakes" / "openai_server.py"


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{fake.base_url}/v1", api_key=DEFAULT_API_KEY, max_retries=0
    ) as sdk:
        yield sdk


@pytest.fixture
async def azure(fake: FakeOpenAI) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=fake.base_url, api_key=DEFAULT_API_KEY, api_version=AZURE_VERSION, max_retries=0
    ) as sdk:
        yield sdk


async def test_streamed_responses_call(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    results = [
        {"file_id": "file-1", "filename": "c_a.txt", "score": 0.5, "text": "t", "attributes": {"k": "v"}}
    ]
    fake.script(Script(tokens=["Hel", "lo"], tools=[FileSearchScript(results=results)], input_tokens=7))
    stream = await client.responses.create(
        model="gpt-test",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}],
        include=["file_search_call.results"],
        stream=True,
    )
    events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["Hel", "lo"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "response.file_search_call.completed" in types
    added = next(e for e in events if isinstance(e, ResponseOutputTextAnnotationAddedEvent))
    assert isinstance(added.annotation, AnnotationFileCitation) and added.annotation.file_id == "file-1"
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    final = completed.response
    assert final.output_text == "Hello"
    assert final.usage is not None and final.usage.input_tokens == 7 and final.usage.output_tokens == 2
    search_item = next(item for item in final.output if isinstance(item, ResponseFileSearchToolCall))
    assert search_item.results is not None and search_item.results[0].attributes == {"k": "v"}


async def test_non_streamed_responses_call_and_incomplete(
    fake: FakeOpenAI, client: openai.AsyncOpenAI
) -> None:
    fake.script(Script(tokens=["a ", "b ", "c "]))
    response = await client.responses.create(model="gpt-test", input="hi", max_output_tokens=2)
    assert response.status == "incomplete"
    assert (
        response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    )
    assert response.output_text == "a b "


async def test_failed_response_event(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.script(Script(fail_after=1, error_code="server_error", error_message="boom"))
    stream = await client.responses.create(model="gpt-test", input="hi", stream=True)
    events = [event async for event in stream]
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None and events[-1].response.error.message == "boom"


async def test_chat_completions_stream_with_usage(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.script(Script(tokens=["Hi", "!"], input_tokens=5))
    stream = await client.chat.completions.create(
        model="llama",
        messages=[{"role": "user", "content": "hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hi!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 2)


async def test_errors_surface_as_sdk_exceptions(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    fake.script(Script.rate_limited())
    with pytest.raises(openai.RateLimitError) as limited:
        await client.responses.create(model="gpt-test", input="hi")
    assert limited.value.code == "rate_limit_exceeded"
    fake.script(Script.context_length_exceeded())
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert too_long.value.code == "context_length_exceeded"
    async with openai.AsyncOpenAI(base_url=f"{fake.base_url}/v1", api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.files.list()


async def test_files_and_vector_stores(fake: FakeOpenAI, client: openai.AsyncOpenAI) -> None:
    uploaded = await client.files.create(file=("chat_att.txt", b"hello file"), purpose="assistants")
    assert uploaded.id.startswith("file-") and uploaded.bytes == 10 and uploaded.filename == "chat_att.txt"
    record = fake.last("files.create")
    assert record.form["purpose"] == "assistants"
    assert record.form["file"]["filename"] == "chat_att.txt" and record.form["file"]["size"] == 10

    store = await client.vector_stores.create(name="chat")
    assert store.id.startswith("vs_") and store.status == "completed"
    added = await client.vector_stores.files.create(
        vector_store_id=store.id, file_id=uploaded.id, attributes={"attachment_id": "att-1"}
    )
    assert added.status == "completed" and added.attributes == {"attachment_id": "att-1"}
    assert fake.vector_stores[store.id].files == {uploaded.id: {"attachment_id": "att-1"}}

    deleted_store = await client.vector_stores.delete(store.id)
    assert deleted_store.deleted
    deleted_file = await client.files.delete(uploaded.id)
    assert deleted_file.deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.delete(uploaded.id)


async def test_azure_files_and_vector_stores(fake: FakeOpenAI, azure: openai.AsyncAzureOpenAI) -> None:
    uploaded = await azure.files.create(file=("a.pdf", b"%PDF-1.4"), purpose="assistants")
    record = fake.last("files.create")
    assert (record.path, record.query, record.family) == (
        "/openai/files",
        {"api-version": AZURE_VERSION},
        "azure",
    )
    assert record.headers["api-key"] == DEFAULT_API_KEY
    store = await azure.vector_stores.create()
    await azure.vector_stores.files.create(vector_store_id=store.id, file_id=uploaded.id)
    assert fake.last("vector_stores.files.create").path == f"/openai/vector_stores/{store.id}/files"
    assert (await azure.vector_stores.delete(store.id)).deleted


async def test_azure_deployment_chat_and_responses(fake: FakeOpenAI, azure: openai.AsyncAzureOpenAI) -> None:
    completion = await azure.chat.completions.create(
        model="my-deployment", messages=[{"role": "user", "content": "x"}]
    )
    assert completion.choices[0].message.content
    assert fake.last("chat").path == "/openai/deployments/my-deployment/chat/completions"
    response = await azure.responses.create(model="my-deployment", input="hi")
    assert response.output_text
    assert fake.last("responses").query == {"api-version": AZURE_VERSION}


async def test_azure_requires_key_and_api_version(fake: FakeOpenAI) -> None:
    async with openai.AsyncAzureOpenAI(
        azure_endpoint=fake.base_url, api_key="wrong", api_version=AZURE_VERSION, max_retries=0
    ) as wrong_key:
        with pytest.raises(openai.AuthenticationError):
            await wrong_key.vector_stores.create()
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{fake.base_url}/openai/vector_stores", headers={"api-key": DEFAULT_API_KEY}, json={}
        ) as response:
            assert response.status == 404  # no api-version


@pytest.mark.slow
async def test_standalone_process_for_benchmarks() -> None:
    script = FAKE_SCRIPT
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "--port",
        "0",
        "--tokens",
        "5",
        "--token-gap-ms",
        "1",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        assert line.startswith("FAKE_OPENAI_URL=")
        base_url = line.split("=", 1)[1]
        async with openai.AsyncOpenAI(
            base_url=f"{base_url}/v1", api_key=DEFAULT_API_KEY, max_retries=0
        ) as client:
            stream = await client.responses.create(model="m", input="hi", stream=True)
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        assert deltas == [f"tok{i} " for i in range(5)]
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0
