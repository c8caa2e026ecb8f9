"""The offline local model: deterministic word-by-word replies, local file search, spreadsheets, summaries."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest

from minichat_host.plugins.types import SearchHit
from minichat_host.providers.base import (
    Cell,
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
from minichat_host.providers.local import LABEL, LocalProvider, summarize_sheet

TENANT = "tenant-1"


def request(text: str = "How are you today?", **fields: object) -> ProviderRequest:
    return ProviderRequest(
        model="local-echo",
        input=[InputMessage(role="user", content=[InputText(text=text)])],
        **fields,  # type: ignore[arg-type]
    )


async def collect(stream: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in stream]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_reply_is_labelled_deterministic_and_streamed_word_by_word() -> None:
    provider = LocalProvider()
    first = await collect(provider.stream(request(), tenant_id=TENANT))
    second = await collect(provider.stream(request(), tenant_id=TENANT))
    assert first == second
    deltas = [e for e in first if isinstance(e, TextDelta)]
    assert len(deltas) > 5
    assert all(len(d.text.split()) == 1 for d in deltas)
    text = text_of(first)
    assert text.startswith(f"{LABEL} You said: How are you today?")
    completed = first[-1]
    assert isinstance(completed, Completed)
    assert completed.usage.output_tokens == math.ceil(len(text.encode()) / 4)
    assert completed.usage.input_tokens == math.ceil(len(b"How are you today?") / 4)
    assert completed.response_id is not None and not completed.incomplete


async def test_max_output_tokens_cuts_the_reply_and_marks_it_incomplete() -> None:
    events = await collect(LocalProvider().stream(request(max_output_tokens=5), tenant_id=TENANT))
    completed = events[-1]
    assert isinstance(completed, Completed)
    assert completed.incomplete and completed.incomplete_reason == "max_output_tokens"
    assert 0 < completed.usage.output_tokens <= 5


async def test_file_search_uses_local_search_and_cites_hits() -> None:
    async def search(tenant_id: str, vector_store_id: str, query: str, max_results: int) -> list[SearchHit]:
        assert (tenant_id, vector_store_id, max_results) == (TENANT, "vs-1", 5)
        return [
            SearchHit(attachment_id="a1", filename="a1.txt", snippet="The launch is on Monday.", score=0.8),
            SearchHit(attachment_id="a1", filename="a1.txt", snippet="Another chunk.", score=0.3),
            SearchHit(attachment_id="a2", filename="a2.txt", snippet="Budget is small.", score=0.5),
        ]

    provider = LocalProvider(local_search=search)
    req = request(
        "When is the launch?",
        tools=[FileSearchTool(vector_store_ids=["vs-1"])],
        citation_titles={"a1": "plan.docx"},
    )
    events = await collect(provider.stream(req, tenant_id=TENANT))
    assert events[:2] == [
        ToolEvent(phase="start", name="file_search"),
        ToolEvent(phase="done", name="file_search", details={"files_searched": 2}),
    ]
    assert 'From your file "plan.docx": The launch is on Monday.' in text_of(events)
    citations = events[-2]
    assert isinstance(citations, Citations)
    assert [(c.source, c.attachment_id, c.title, c.snippet, c.score) for c in citations.items] == [
        ("file", "a1", "plan.docx", "The launch is on Monday.", 0.8),
        ("file", "a2", "a2.txt", "Budget is small.", 0.5),
    ]
    assert isinstance(events[-1], Completed)


async def test_file_search_without_hits_says_so_and_cites_nothing() -> None:
    async def search(tenant_id: str, vector_store_id: str, query: str, max_results: int) -> list[SearchHit]:
        return []

    events = await collect(
        LocalProvider(local_search=search).stream(
            request(tools=[FileSearchTool(vector_store_ids=["vs-1"])]), tenant_id=TENANT
        )
    )
    assert ToolEvent(phase="done", name="file_search", details={"files_searched": 0}) in events
    assert "found nothing" in text_of(events)
    assert not any(isinstance(e, Citations) for e in events)


async def test_a_failing_search_is_a_provider_error() -> None:
    async def search(tenant_id: str, vector_store_id: str, query: str, max_results: int) -> list[SearchHit]:
        raise OSError("index unreadable")

    stream = LocalProvider(local_search=search).stream(
        request(tools=[FileSearchTool(vector_store_ids=["vs-1"])]), tenant_id=TENANT
    )
    with pytest.raises(ProviderError) as caught:
        await collect(stream)
    assert caught.value.code == "provider_error" and "index unreadable" in caught.value.message


async def test_code_interpreter_totals_spreadsheet_columns() -> None:
    async def read(tenant_id: str, file_id: str) -> list[list[Cell]]:
        assert (tenant_id, file_id) == (TENANT, "file-sheet")
        return [
            ["Item", "Qty", "Price"],
            ["apple", 2, 1.5],
            ["pear", "3", 2.25],
            [None, None, None],
            ["fig", 1, None],
        ]

    provider = LocalProvider(local_sheet_reader=read)
    events = await collect(
        provider.stream(
            request("Totals?", tools=[CodeInterpreterTool(file_ids=["file-sheet"])]), tenant_id=TENANT
        )
    )
    assert events[:2] == [
        ToolEvent(phase="start", name="code_interpreter"),
        ToolEvent(
            phase="done", name="code_interpreter", details={"output": "rows=3\nsum(Qty)=6\nsum(Price)=3.75"}
        ),
    ]
    assert "column totals: Qty = 6, Price = 3.75." in text_of(events)


@pytest.mark.parametrize(
    ("rows", "output"),
    [
        ([], "rows=0"),
        ([[1, 2], [3, 4]], "rows=2\nsum(column 1)=4\nsum(column 2)=6"),
        ([["a", "b"], ["x", "y"]], "rows=1"),
        ([["n"], [True], [0.1], [0.2]], "rows=3\nsum(n)=0.3"),
    ],
)
def test_summarize_sheet(rows: list[list[Cell]], output: str) -> None:
    assert summarize_sheet(rows)[0] == output


async def test_web_search_and_images_are_acknowledged_without_tool_calls() -> None:
    req = ProviderRequest(
        model="local-echo",
        input=[InputMessage(role="user", content=[InputText(text="see"), InputImage(image_url="data:,x")])],
        tools=[WebSearchTool()],
    )
    events = await collect(LocalProvider().stream(req, tenant_id=TENANT))
    assert not any(isinstance(e, ToolEvent) for e in events)
    text = text_of(events)
    assert "Web search is not available" in text and "1 image(s)" in text


async def test_complete_returns_an_extractive_summary() -> None:
    req = ProviderRequest(
        model="local-echo",
        input=[
            InputMessage(
                role="user",
                content=[
                    InputText(
                        text="Existing summary: <summary>We planned a trip.</summary>\n"
                        "User: I want to visit Rome. Also Naples maybe.\n"
                        "Assistant: Rome is lovely in May! Book early.\n"
                        "Summarize the conversation above."
                    )
                ],
            ),
            InputMessage(role="assistant", content=[OutputText(text="ignored line without a role label")]),
        ],
    )
    result = await LocalProvider().complete(req, tenant_id=TENANT)
    assert result.text == (
        "<summary>We planned a trip. User: I want to visit Rome. Assistant: Rome is lovely in May!</summary>"
    )
    assert result.usage.output_tokens == math.ceil(len(result.text.encode()) / 4)
    bounded = await LocalProvider().complete(
        ProviderRequest(
            model="m",
            input=[InputMessage(role="user", content=[InputText(text="word " * 2000)])],
            max_output_tokens=20,
        ),
        tenant_id=TENANT,
    )
    assert (
        len(bounded.text) <= 80
        and bounded.text.startswith("<summary>")
        and bounded.text.endswith("</summary>")
    )


async def test_token_delay_is_applied_between_words() -> None:
    provider = LocalProvider(token_delay_seconds=0.001)
    events = await collect(provider.stream(request("hi"), tenant_id=TENANT))
    assert isinstance(events[-1], Completed)
