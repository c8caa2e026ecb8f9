"""The embedded offline model: deterministic replies built from the request, streamed word by word.

It makes the service usable and testable with no network and no API key. The reply echoes the user's
message under a clear `[local model]` label; with attachments it answers from the local storage's
search hits (a `file_search` tool call plus citations) and from spreadsheets (a `code_interpreter` tool
call that totals the numeric columns). `complete()` returns an extractive `<summary>` for thread summaries.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncIterator

from minichat_host.providers.base import (
    Cell,
    Citations,
    CodeInterpreterTool,
    Completed,
    CompletionResult,
    FileSearchTool,
    InputImage,
    LocalSearch,
    LocalSheetReader,
    ProviderError,
    ProviderRequest,
    StreamEvent,
    TextDelta,
    ToolEvent,
    Usage,
    WebSearchTool,
    estimate_request_tokens,
    estimate_tokens,
)
from minichat_host.providers.retrieval import file_citations, files_searched, search_files

LABEL = "[local model]"
CLOSING_SENTENCE = (
    "This reply comes from minichat's built-in local model, which works offline and only "
    "repeats and summarizes what it is given."
)
ECHO_LIMIT = 300
SNIPPET_SENTENCE_LIMIT = 240
SUMMARY_LIMIT = 2000
MAX_SHEETS = 3
_WORD = re.compile(r"\S+\s*")
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?=\s|$)")
_ROLE_LINE = re.compile(r"^(user|assistant|system)\s*:", re.IGNORECASE)
_SUMMARY_BLOCK = re.compile(r"<summary>(.*?)</summary>", re.DOTALL | re.IGNORECASE)


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] or text[:limit]
    return cut + "…"


def _number(cell: Cell) -> float | None:
    if isinstance(cell, bool) or cell is None:
        return None
    if isinstance(cell, int | float):
        return float(cell) if math.isfinite(cell) else None
    try:
        value = float(cell.strip().replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else format(value, ".10g")


def summarize_sheet(rows: list[list[Cell]]) -> tuple[str, str]:
    """(tool output, answer sentence) for one sheet: data row count and the total of each numeric column."""
    rows = [row for row in rows if any(cell not in (None, "") for cell in row)]
    if not rows:
        return "rows=0", "The spreadsheet is empty."
    first = rows[0]
    has_header = len(rows) > 1 and any(isinstance(c, str) and c.strip() and _number(c) is None for c in first)
    data = rows[1:] if has_header else rows
    width = max(len(row) for row in rows)
    totals: list[tuple[str, str]] = []
    for column in range(width):
        numbers = [n for row in data if column < len(row) and (n := _number(row[column])) is not None]
        if not numbers:
            continue
        name = first[column] if has_header and column < len(first) else None
        label = str(name).strip() if name not in (None, "") else f"column {column + 1}"
        totals.append((label, _format_number(sum(numbers))))
    output = "\n".join([f"rows={len(data)}", *(f"sum({label})={total}" for label, total in totals)])
    if totals:
        listed = ", ".join(f"{label} = {total}" for label, total in totals)
        sentence = f"The spreadsheet has {len(data)} data rows; column totals: {listed}."
    else:
        sentence = f"The spreadsheet has {len(data)} data rows and no numeric columns."
    return output, sentence


def extractive_summary(request: ProviderRequest, limit: int = SUMMARY_LIMIT) -> str:
    """An earlier summary (if the input carries one) plus the first sentence of each conversation line."""
    texts = [message.text() for message in request.input]
    previous = [" ".join(m.group(1).split()) for text in texts for m in _SUMMARY_BLOCK.finditer(text)]
    lines = [" ".join(line.split()) for text in texts for line in _SUMMARY_BLOCK.sub("", text).splitlines()]
    lines = [line for line in lines if line]
    labelled = [line for line in lines if _ROLE_LINE.match(line)]
    picked: list[str] = []
    for line in [*previous, *(labelled or lines)]:
        match = _FIRST_SENTENCE.match(line)
        sentence = match.group(1) if match else line
        if sentence and sentence not in picked:
            picked.append(sentence)
    return _shorten(" ".join(picked), limit)


class LocalProvider:
    def __init__(
        self,
        *,
        local_search: LocalSearch | None = None,
        local_sheet_reader: LocalSheetReader | None = None,
        token_delay_seconds: float = 0.0,
    ) -> None:
        self._local_search = local_search
        self._local_sheet_reader = local_sheet_reader
        self._token_delay = max(0.0, token_delay_seconds)

    async def aclose(self) -> None:
        return None

    async def stream(self, request: ProviderRequest, *, tenant_id: str) -> AsyncIterator[StreamEvent]:
        question = request.last_user_text()
        sentences = [f"{LABEL} You said: {_shorten(question, ECHO_LIMIT) or '(nothing)'}"]
        citations = None

        file_search = request.tool(FileSearchTool)
        if file_search is not None and file_search.vector_store_ids and self._local_search is not None:
            yield ToolEvent(phase="start", name="file_search")
            hits = await search_files(self._local_search, tenant_id, file_search, question)
            yield ToolEvent(
                phase="done", name="file_search", details={"files_searched": files_searched(hits)}
            )
            if hits:
                best = hits[0]
                title = request.citation_titles.get(best.attachment_id) or best.filename
                snippet = _shorten(best.snippet, SNIPPET_SENTENCE_LIMIT)
                sentences.append(f'From your file "{title}": {snippet}')
                citations = Citations(items=file_citations(hits, request.citation_titles))
            else:
                sentences.append("I searched your files but found nothing that matches.")

        code_interpreter = request.tool(CodeInterpreterTool)
        if code_interpreter is not None and self._local_sheet_reader is not None:
            for file_id in code_interpreter.file_ids[:MAX_SHEETS]:
                yield ToolEvent(phase="start", name="code_interpreter")
                try:
                    rows = await self._local_sheet_reader(tenant_id, file_id)
                except ProviderError:
                    raise
                except Exception as exc:
                    raise ProviderError("provider_error", f"reading the spreadsheet failed: {exc}") from exc
                output, sentence = summarize_sheet(rows)
                yield ToolEvent(phase="done", name="code_interpreter", details={"output": output})
                sentences.append(sentence)

        if request.tool(WebSearchTool) is not None:
            sentences.append("Web search is not available to the local model.")
        last_user = next((m for m in reversed(request.input) if m.role == "user"), None)
        images = sum(isinstance(p, InputImage) for p in last_user.content) if last_user else 0
        if images:
            sentences.append(f"You attached {images} image(s), which the local model cannot see.")
        sentences.append(CLOSING_SENTENCE)

        emitted: list[str] = []
        incomplete = False
        budget = request.max_output_tokens
        for word in _WORD.findall(" ".join(sentences)):
            if budget is not None and estimate_tokens("".join(emitted) + word) > budget:
                incomplete = True
                break
            # sleep(0) still yields to the loop, so a fast local stream never starves other tasks.
            await asyncio.sleep(self._token_delay)
            emitted.append(word)
            yield TextDelta(text=word)

        if citations is not None:
            yield citations
        yield Completed(
            usage=Usage(
                input_tokens=estimate_request_tokens(request),
                output_tokens=estimate_tokens("".join(emitted)),
            ),
            response_id=_response_id(request),
            incomplete=incomplete,
            incomplete_reason="max_output_tokens" if incomplete else None,
        )

    async def complete(self, request: ProviderRequest, *, tenant_id: str) -> CompletionResult:
        limit = SUMMARY_LIMIT
        if request.max_output_tokens is not None:
            limit = max(1, min(limit, request.max_output_tokens * 4 - len("<summary></summary>")))
        text = f"<summary>{extractive_summary(request, limit)}</summary>"
        return CompletionResult(
            text=text,
            usage=Usage(input_tokens=estimate_request_tokens(request), output_tokens=estimate_tokens(text)),
            response_id=_response_id(request),
        )


def _response_id(request: ProviderRequest) -> str:
    digest = hashlib.sha256("\x00".join(m.text() for m in request.input).encode("utf-8")).hexdigest()
    return f"local_{digest[:24]}"
