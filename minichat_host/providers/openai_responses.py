"""OpenAI Responses API adapter (also Azure OpenAI: `api-key` auth, `api-version`, deployment in the path).

Streaming maps the typed SSE events: `response.output_text.delta` -> TextDelta; hosted tool calls
(`file_search_call` / `web_search_call` / `code_interpreter_call`) -> ToolEvent start when the item is
added or reports `in_progress`, done when the item is done (its results are known then);
`url_citation` / `file_citation` annotations -> one Citations event; `response.completed` /
`response.incomplete` -> Completed; `response.failed` / `error` -> ProviderError.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from minichat_host.config import ProviderConfig
from minichat_host.providers.base import (
    Citation,
    Citations,
    CodeInterpreterTool,
    Completed,
    CompletionResult,
    ContentPart,
    FileSearchTool,
    InputImage,
    ProviderError,
    ProviderRequest,
    Span,
    StreamEvent,
    TextDelta,
    ToolEvent,
    ToolName,
    Usage,
    WebSearchTool,
    estimate_request_tokens,
    estimate_tokens,
)
from minichat_host.providers.sse import SseParser
from minichat_host.providers.upstream import (
    UpstreamClient,
    as_int,
    decode_event_json,
    error_code_from_upstream,
    read_sse,
)

SNIPPET_LIMIT = 500
_TOOL_ITEM_TYPES: dict[str, ToolName] = {
    "file_search_call": "file_search",
    "web_search_call": "web_search",
    "code_interpreter_call": "code_interpreter",
}
_TOOL_EVENT = re.compile(r"^response\.(file_search_call|web_search_call|code_interpreter_call)\.([a-z_]+)$")
# Uploads are named `{chat_id}_{attachment_id}.{ext}`: the attachment id is the UUID before the extension.
_UPLOADED_NAME = re.compile(
    r"_(?P<attachment_id>[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})"
    r"(?:\.[^./\\]*)?$"
)
# The body keys the adapter owns; `extra_body` may add to the request but never replace these.
_PROTECTED_KEYS = frozenset({"model", "input", "stream", "instructions", "tools"})


def _content_part(role: str, part: ContentPart) -> dict[str, Any]:
    if isinstance(part, InputImage):
        image: dict[str, Any] = {"type": "input_image", "detail": part.detail or "auto"}
        if part.file_id:
            image["file_id"] = part.file_id
        else:
            image["image_url"] = part.image_url
        return image
    # The API types assistant history as output_text and user/system text as input_text.
    return {"type": "output_text" if role == "assistant" else "input_text", "text": part.text}


def _tool(tool: FileSearchTool | WebSearchTool | CodeInterpreterTool) -> dict[str, Any]:
    if isinstance(tool, FileSearchTool):
        spec: dict[str, Any] = {"type": "file_search", "vector_store_ids": list(tool.vector_store_ids)}
        if tool.max_num_results is not None:
            spec["max_num_results"] = tool.max_num_results
        if tool.filters is not None:
            spec["filters"] = tool.filters
        return spec
    if isinstance(tool, WebSearchTool):
        return {"type": "web_search", "search_context_size": tool.search_context_size}
    return {"type": "code_interpreter", "container": {"type": "auto", "file_ids": list(tool.file_ids)}}


def responses_body(request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
    """The Responses API request body (original-outbox-and-plugins.md §5)."""
    body: dict[str, Any] = {
        "model": request.model,
        "input": [
            {
                "type": "message",
                "role": message.role,
                "content": [_content_part(message.role, part) for part in message.content],
            }
            for message in request.input
        ],
        "stream": stream,
        "store": False,
    }
    if request.instructions:
        body["instructions"] = request.instructions
    if request.max_output_tokens is not None:
        body["max_output_tokens"] = request.max_output_tokens
    if request.tools:
        body["tools"] = [_tool(tool) for tool in request.tools]
        if request.max_tool_calls is not None:
            body["max_tool_calls"] = request.max_tool_calls
        include = []
        if any(isinstance(tool, FileSearchTool) for tool in request.tools):
            # The results carry each file's attributes: how a file citation finds its attachment_id.
            include.append("file_search_call.results")
        if any(isinstance(tool, CodeInterpreterTool) for tool in request.tools):
            include.append("code_interpreter_call.outputs")  # the `output` of the tool's done event
        if include:
            body["include"] = include
    if request.user:
        body["user"] = request.user
    if request.metadata:
        body["metadata"] = dict(request.metadata)
    params = request.api_params
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.reasoning_effort:
        body["reasoning"] = {"effort": params.reasoning_effort}
    # frequency/presence penalties and stop are Chat Completions parameters the Responses API rejects.
    for key, value in (params.extra_body or {}).items():
        if key not in _PROTECTED_KEYS:
            body[key] = value
    return body


def usage_from_response(response: Any) -> Usage | None:
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    input_details = usage.get("input_tokens_details")
    output_details = usage.get("output_tokens_details")
    input_details = input_details if isinstance(input_details, dict) else {}
    output_details = output_details if isinstance(output_details, dict) else {}
    return Usage(
        input_tokens=as_int(usage.get("input_tokens")),
        output_tokens=as_int(usage.get("output_tokens")),
        cache_read_input_tokens=as_int(input_details.get("cached_tokens")),
        cache_write_input_tokens=as_int(input_details.get("cache_write_tokens")),
        reasoning_tokens=as_int(output_details.get("reasoning_tokens")),
    )


def _failure(error: Any, fallback: str) -> ProviderError:
    code = message = None
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
    text = message or fallback
    return ProviderError(error_code_from_upstream(code, text), f"provider error: {text}"[:500])


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def attachment_id_from_filename(filename: str) -> str | None:
    match = _UPLOADED_NAME.search(filename)
    return match.group("attachment_id") if match else None


@dataclass(slots=True)
class _FileResult:
    attachment_id: str | None
    filename: str
    text: str
    score: float | None


@dataclass(slots=True)
class _ToolCall:
    name: ToolName
    started: bool = False
    done: bool = False
    details: dict[str, Any] = field(default_factory=dict)


class _StreamState:
    """Everything the event mapping remembers between events of one response."""

    def __init__(self, request: ProviderRequest) -> None:
        # What the end of a stream needs of the request, not the request: its prompt (the whole history)
        # would otherwise stay in memory for as long as the stream is open.
        self.citation_titles = request.citation_titles
        self.input_estimate = estimate_request_tokens(request)
        self.response_id: str | None = None
        self.tools: dict[str, _ToolCall] = {}
        self.texts: dict[tuple[str, int], list[str]] = {}
        self.annotations: list[tuple[dict[str, Any], str]] = []  # (annotation, text it annotates)
        self.file_results: dict[str, _FileResult] = {}
        self.output_text: list[str] = []

    # --- tools -----------------------------------------------------------------------------------
    def _call(self, item_id: str, name: ToolName) -> _ToolCall:
        call = self.tools.get(item_id)
        if call is None:
            call = self.tools[item_id] = _ToolCall(name=name)
        return call

    def tool_started(self, item_id: str, name: ToolName) -> ToolEvent | None:
        call = self._call(item_id, name)
        if call.started:
            return None
        call.started = True
        return ToolEvent(phase="start", name=name, details={})

    def tool_item_done(self, item: dict[str, Any], name: ToolName) -> list[StreamEvent]:
        item_id = str(item.get("id") or f"anonymous-{len(self.tools)}")
        events: list[StreamEvent] = []
        start = self.tool_started(item_id, name)
        if start is not None:
            events.append(start)
        call = self.tools[item_id]
        if name == "file_search":
            results = _list(item.get("results"))
            files: set[str] = set()
            for result in results:
                if isinstance(result, dict) and isinstance(result.get("file_id"), str):
                    files.add(result["file_id"])
                    self._remember_file_result(result)
            call.details = {"files_searched": len(files)}
        elif name == "code_interpreter":
            outputs = _list(item.get("outputs"))
            logs = [
                o["logs"] for o in outputs if isinstance(o, dict) and o.get("type") == "logs" and "logs" in o
            ]
            call.details = {"output": "\n".join(str(log) for log in logs)}
        if not call.done:
            call.done = True
            events.append(ToolEvent(phase="done", name=name, details=call.details))
        return events

    def unfinished_tools(self) -> list[StreamEvent]:
        """Close every started call that never reported done, so starts and dones always pair up."""
        events: list[StreamEvent] = []
        for call in self.tools.values():
            if call.started and not call.done:
                call.done = True
                if call.name == "file_search" and not call.details:
                    call.details = {"files_searched": 0}
                events.append(ToolEvent(phase="done", name=call.name, details=call.details))
        return events

    def _remember_file_result(self, result: dict[str, Any]) -> None:
        file_id = result["file_id"]
        filename = str(result.get("filename") or "")
        attributes = _dict(result.get("attributes"))
        attachment_id = attributes.get("attachment_id")
        score = result.get("score")
        known = self.file_results.get(file_id)
        entry = _FileResult(
            attachment_id=str(attachment_id) if attachment_id else attachment_id_from_filename(filename),
            filename=filename,
            text=str(result.get("text") or ""),
            score=float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None,
        )
        if known is None or (entry.score or 0.0) > (known.score or 0.0):
            self.file_results[file_id] = entry

    # --- text and annotations --------------------------------------------------------------------
    def text_delta(self, event: dict[str, Any]) -> TextDelta | None:
        delta = event.get("delta")
        if not isinstance(delta, str) or not delta:
            return None
        key = (str(event.get("item_id")), as_int(event.get("content_index")))
        self.texts.setdefault(key, []).append(delta)
        self.output_text.append(delta)
        return TextDelta(text=delta)

    def annotation_added(self, event: dict[str, Any]) -> None:
        annotation = event.get("annotation")
        if isinstance(annotation, dict):
            key = (str(event.get("item_id")), as_int(event.get("content_index")))
            self.annotations.append((annotation, "".join(self.texts.get(key, []))))

    def message_done(self, item: dict[str, Any]) -> None:
        """Annotations also arrive on the finished message (the only place some servers put them)."""
        content = _list(item.get("content"))
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("annotations"), list):
                text = str(part.get("text") or "")
                for annotation in part["annotations"]:
                    if isinstance(annotation, dict):
                        self.annotations.append((annotation, text))

    def citations(self) -> Citations | None:
        items: list[Citation] = []
        seen: set[tuple[str, str]] = set()
        for annotation, text in self.annotations:
            citation = self._citation(annotation, text)
            if citation is None:
                continue
            key = (citation.source, citation.url or citation.attachment_id or citation.title)
            if key in seen:
                continue
            seen.add(key)
            items.append(citation)
        return Citations(items=items) if items else None

    def _citation(self, annotation: dict[str, Any], text: str) -> Citation | None:
        kind = annotation.get("type")
        if kind == "url_citation" and isinstance(annotation.get("url"), str):
            url = annotation["url"]
            start, end = annotation.get("start_index"), annotation.get("end_index")
            span = None
            snippet = ""
            if isinstance(start, int) and isinstance(end, int) and 0 <= start <= end:
                span = Span(start=start, end=end)
                snippet = text[start:end][:SNIPPET_LIMIT]
            title = annotation.get("title")
            return Citation(
                source="web", title=str(title) if title else url, url=url, snippet=snippet, span=span
            )
        if kind == "file_citation" and isinstance(annotation.get("file_id"), str):
            file_id = annotation["file_id"]
            filename = str(annotation.get("filename") or "")
            result = self.file_results.get(file_id)
            attachment_id = result.attachment_id if result else attachment_id_from_filename(filename)
            title = (
                (self.citation_titles.get(attachment_id) if attachment_id else None)
                or filename
                or (result.filename if result else "")
                or file_id
            )
            return Citation(
                source="file",
                title=title,
                attachment_id=attachment_id,
                snippet=(result.text if result else "")[:SNIPPET_LIMIT],
                score=result.score if result else None,
            )
        return None  # container_file_citation / file_path point at generated files, not sources


class OpenAIResponsesProvider:
    def __init__(self, provider_id: str, cfg: ProviderConfig) -> None:
        self.provider_id = provider_id
        self._client = UpstreamClient(provider_id, cfg)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(self, request: ProviderRequest, *, tenant_id: str) -> AsyncIterator[StreamEvent]:
        endpoint = self._client.endpoint(tenant_id, request.model, accept="text/event-stream")
        state = _StreamState(request)
        terminal: list[StreamEvent] = []
        posted = self._client.post(endpoint, responses_body(request, stream=True))
        del request  # the prompt is not kept for the length of the stream (state has what the end needs)
        parser = SseParser()
        async with posted as response:
            # Read here rather than through an event generator: one generator less for every token to pass.
            while not terminal and (batch := await read_sse(response, parser)) is not None:
                # Popped: neither an event nor its JSON stays referenced while the next read is awaited.
                batch.reverse()
                while batch and not terminal:
                    sse = batch.pop()
                    if sse.data.strip() == "[DONE]":
                        continue
                    event = decode_event_json(sse)
                    kind = str(event.get("type") or sse.event)
                    # A refusal is what the user gets to read instead of an answer: relay it like text.
                    if kind in ("response.output_text.delta", "response.refusal.delta"):
                        delta = state.text_delta(event)
                        if delta is not None:
                            yield delta
                    elif kind in ("response.completed", "response.incomplete"):
                        terminal = self._finish(state, event, incomplete=kind == "response.incomplete")
                        break
                    elif kind == "response.failed":
                        failed = event.get("response")
                        raise _failure(
                            failed.get("error") if isinstance(failed, dict) else None, "response failed"
                        )
                    elif kind == "error":
                        raise _failure(
                            event.get("error") if isinstance(event.get("error"), dict) else event, "error"
                        )
                    else:
                        for mapped in self._other(state, kind, event):
                            yield mapped
        if not terminal:
            raise ProviderError(
                "provider_error", "the provider ended the stream before the response completed"
            )
        # Yielded after the connection is released: a consumer that stops here holds nothing open.
        for item in terminal:
            yield item

    @staticmethod
    def _other(state: _StreamState, kind: str, event: dict[str, Any]) -> list[StreamEvent]:
        if kind in ("response.created", "response.in_progress", "response.queued"):
            response = event.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                state.response_id = response["id"]
            return []
        if kind == "response.output_text.annotation.added":
            state.annotation_added(event)
            return []
        if kind in ("response.output_item.added", "response.output_item.done"):
            item = event.get("item")
            if not isinstance(item, dict):
                return []
            item_type = str(item.get("type"))
            name = _TOOL_ITEM_TYPES.get(item_type)
            if name is None:
                if item_type == "message" and kind == "response.output_item.done":
                    state.message_done(item)
                return []
            if kind == "response.output_item.added":
                start = state.tool_started(str(item.get("id")), name)
                return [start] if start is not None else []
            return state.tool_item_done(item, name)
        match = _TOOL_EVENT.match(kind)
        if match and match.group(2) == "in_progress":
            start = state.tool_started(str(event.get("item_id")), _TOOL_ITEM_TYPES[match.group(1)])
            return [start] if start is not None else []
        return []

    @staticmethod
    def _finish(state: _StreamState, event: dict[str, Any], *, incomplete: bool) -> list[StreamEvent]:
        response = _dict(event.get("response"))
        if isinstance(response.get("id"), str):
            state.response_id = response["id"]
        events: list[StreamEvent] = []
        for item in _list(response.get("output")):
            # Items whose `output_item.done` we never saw (lenient servers) still count.
            if isinstance(item, dict):
                name = _TOOL_ITEM_TYPES.get(str(item.get("type")))
                call = state.tools.get(str(item.get("id")))
                if name is not None and (call is None or not call.done):
                    events.extend(state.tool_item_done(item, name))
                elif item.get("type") == "message" and not state.annotations:
                    state.message_done(item)
        events.extend(state.unfinished_tools())
        citations = state.citations()
        if citations is not None:
            events.append(citations)
        usage = usage_from_response(response)
        reason = None
        details = response.get("incomplete_details")
        if incomplete and isinstance(details, dict) and isinstance(details.get("reason"), str):
            reason = details["reason"]
        events.append(
            Completed(
                usage=usage
                or Usage(
                    input_tokens=state.input_estimate,
                    output_tokens=estimate_tokens("".join(state.output_text)),
                ),
                usage_reported=usage is not None,
                response_id=state.response_id,
                incomplete=incomplete,
                incomplete_reason=reason,
            )
        )
        return events

    async def complete(self, request: ProviderRequest, *, tenant_id: str) -> CompletionResult:
        endpoint = self._client.endpoint(tenant_id, request.model, accept="application/json")
        async with self._client.post(endpoint, responses_body(request, stream=False)) as response:
            doc = await self._client.read_json(response)
        if not isinstance(doc, dict):
            raise ProviderError("provider_error", "the provider sent an unexpected response shape")
        status = doc.get("status")
        if status == "failed":
            raise _failure(doc.get("error"), "response failed")
        texts: list[str] = []
        for item in doc.get("output") or []:
            if isinstance(item, dict) and item.get("type") == "message":
                for part in item.get("content") or []:
                    if isinstance(part, dict) and part.get("type") == "output_text":
                        texts.append(str(part.get("text") or ""))
        text = "".join(texts)
        usage = usage_from_response(doc) or Usage(
            input_tokens=estimate_request_tokens(request), output_tokens=estimate_tokens(text)
        )
        return CompletionResult(
            text=text,
            usage=usage,
            response_id=doc.get("id") if isinstance(doc.get("id"), str) else None,
            incomplete=status == "incomplete",
        )
