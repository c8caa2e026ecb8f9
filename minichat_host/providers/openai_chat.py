"""Chat Completions adapter for OpenAI-compatible servers (vLLM, Ollama, llama.cpp, gateways): text only.

Streams `data: {chunk}` lines with `choices[0].delta.content`, asks for the usage chunk with
`stream_options.include_usage`, and ends at `data: [DONE]`. Hosted tools do not exist here: when the
request has a file_search tool and a local search is wired in, the adapter searches the local storage
itself, reports a `file_search` tool call, gives the hits to the model as instructions, and cites them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import msgspec

from minichat_host.config import ProviderConfig
from minichat_host.providers.base import (
    Citations,
    Completed,
    CompletionResult,
    FileSearchTool,
    InputImage,
    InputMessage,
    LocalSearch,
    ProviderError,
    ProviderRequest,
    SearchHit,
    StreamEvent,
    TextDelta,
    ToolEvent,
    Usage,
    estimate_request_tokens,
    estimate_tokens,
)
from minichat_host.providers.retrieval import context_block, file_citations, files_searched, search_files
from minichat_host.providers.sse import SseEvent, SseParser
from minichat_host.providers.upstream import (
    UpstreamClient,
    as_int,
    decode_event_json,
    error_code_from_upstream,
    read_sse,
)

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
# `providers.<id>.api_path` defaults to the Responses path; a chat provider left at that default means
# the standard Chat Completions path.
_RESPONSES_DEFAULT_PATH = "/v1/responses"
_PROTECTED_KEYS = frozenset({"model", "messages", "stream", "stream_options"})


def _message(message: InputMessage) -> dict[str, Any]:
    if not any(isinstance(part, InputImage) for part in message.content):
        # Plain string content: the form every compatible server accepts.
        return {"role": message.role, "content": message.text()}
    parts: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, InputImage):
            # A provider file id means nothing to a Chat Completions server; only URLs travel.
            if part.image_url:
                parts.append({"type": "image_url", "image_url": {"url": part.image_url}})
        else:
            parts.append({"type": "text", "text": part.text})
    return {"role": message.role, "content": parts}


def chat_body(request: ProviderRequest, *, stream: bool, file_context: str | None = None) -> dict[str, Any]:
    system = "\n\n".join(text for text in (request.instructions, file_context) if text)
    messages = [{"role": "system", "content": system}] if system else []
    messages.extend(_message(message) for message in request.input)
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    params = request.api_params
    for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "stop", "reasoning_effort"):
        value = getattr(params, key)
        if value is not None:
            body[key] = value
    if request.user:
        body["user"] = request.user
    for key, value in (params.extra_body or {}).items():
        if key not in _PROTECTED_KEYS:
            body[key] = value
    return body


def usage_from_chat(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    prompt_details = prompt_details if isinstance(prompt_details, dict) else {}
    completion_details = completion_details if isinstance(completion_details, dict) else {}
    return Usage(
        input_tokens=as_int(usage.get("prompt_tokens")),
        output_tokens=as_int(usage.get("completion_tokens")),
        cache_read_input_tokens=as_int(prompt_details.get("cached_tokens")),
        reasoning_tokens=as_int(completion_details.get("reasoning_tokens")),
    )


def _chunk_error(chunk: dict[str, Any]) -> ProviderError | None:
    error = chunk.get("error")
    if not error:
        return None
    code = message = None
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
    text = message or str(error)
    return ProviderError(error_code_from_upstream(code, text), f"provider error: {text}"[:500])


class _ChunkParts(NamedTuple):
    response_id: str | None
    usage: Usage | None
    texts: tuple[str, ...]
    finish_reason: str | None


class _TypedDelta(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None


class _TypedChoice(msgspec.Struct):
    index: int = 0
    delta: _TypedDelta | None = None
    finish_reason: str | None = None


class _TypedChunk(msgspec.Struct):
    """The usual shape of a `chat.completion.chunk` (other fields are skipped by the decoder)."""

    id: str | None = None
    choices: list[_TypedChoice] = []
    usage: dict[str, Any] | None = None
    error: Any = None


_decode_typed_chunk = msgspec.json.Decoder(_TypedChunk).decode


def event_parts(sse: SseEvent) -> _ChunkParts:
    """`_chunk_parts` of the event's JSON; a chunk of the usual shape is decoded straight into structs (a
    third of the dict walk's cost per streamed token), anything else goes through the lenient walk."""
    try:
        chunk = _decode_typed_chunk(sse.data)
    except msgspec.DecodeError:  # also a ValidationError: a field of another type than the usual
        return _chunk_parts(decode_event_json(sse))
    if chunk.error:
        return _chunk_parts(decode_event_json(sse))  # the walk raises the error it carries
    texts: list[str] = []
    finish_reason: str | None = None
    for choice in chunk.choices:
        if as_int(choice.index) != 0:
            continue
        delta = choice.delta
        if delta is not None:
            if delta.content:
                texts.append(delta.content)
            if delta.refusal:  # a refusal is the text the user gets instead
                texts.append(delta.refusal)
        if choice.finish_reason is not None:
            finish_reason = choice.finish_reason
    return _ChunkParts(
        response_id=chunk.id,
        usage=None if chunk.usage is None else usage_from_chat(chunk.usage),  # only the last chunk has one
        texts=tuple(texts),
        finish_reason=finish_reason,
    )


def _chunk_parts(chunk: dict[str, Any]) -> _ChunkParts:
    """What one `chat.completion.chunk` carries for choice 0 (raises the error a chunk may carry)."""
    error = _chunk_error(chunk)
    if error is not None:
        raise error
    texts: list[str] = []
    finish_reason: str | None = None
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict) or as_int(choice.get("index")) != 0:
            continue
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = {}
        for key in ("content", "refusal"):  # a refusal is the text the user gets instead
            content = delta.get(key)
            if isinstance(content, str) and content:
                texts.append(content)
        if isinstance(choice.get("finish_reason"), str):
            finish_reason = choice["finish_reason"]
    response_id = chunk.get("id")
    return _ChunkParts(
        response_id=response_id if isinstance(response_id, str) else None,
        usage=usage_from_chat(chunk.get("usage")),
        texts=tuple(texts),
        finish_reason=finish_reason,
    )


class OpenAIChatProvider:
    def __init__(
        self, provider_id: str, cfg: ProviderConfig, *, local_search: LocalSearch | None = None
    ) -> None:
        self.provider_id = provider_id
        api_path = CHAT_COMPLETIONS_PATH if cfg.api_path == _RESPONSES_DEFAULT_PATH else cfg.api_path
        self._client = UpstreamClient(provider_id, cfg, api_path=api_path)
        self._local_search = local_search

    async def aclose(self) -> None:
        await self._client.aclose()

    async def stream(self, request: ProviderRequest, *, tenant_id: str) -> AsyncIterator[StreamEvent]:
        hits: list[SearchHit] = []
        file_context = None
        tool = request.tool(FileSearchTool)
        if tool is not None and tool.vector_store_ids and self._local_search is not None:
            yield ToolEvent(phase="start", name="file_search")
            hits = await search_files(self._local_search, tenant_id, tool, request.last_user_text())
            yield ToolEvent(
                phase="done", name="file_search", details={"files_searched": files_searched(hits)}
            )
            if hits:
                file_context = context_block(hits, request.citation_titles)

        endpoint = self._client.endpoint(tenant_id, request.model, accept="text/event-stream")
        usage: Usage | None = None
        finish_reason: str | None = None
        done = False
        response_id: str | None = None
        output: list[str] = []
        body = chat_body(request, stream=True, file_context=file_context)
        # What the end needs of the request, not the request: its prompt (the whole history) would otherwise
        # stay in memory for as long as the stream is open.
        citation_titles = request.citation_titles if hits else {}
        input_estimate = estimate_request_tokens(request)
        del request
        parser = SseParser()
        async with self._client.post(endpoint, body) as response:
            del body  # sent: not kept for the length of the stream
            # Read here rather than through an event generator: one generator less for every token to pass.
            while not done and (batch := await read_sse(response, parser)) is not None:
                # Popped: neither an event nor its JSON stays referenced while the next read is awaited.
                batch.reverse()
                while batch:
                    sse = batch.pop()
                    if sse.data.strip() == "[DONE]":
                        done = True
                        break
                    parts = event_parts(sse)
                    del sse
                    response_id = response_id or parts.response_id
                    usage = parts.usage or usage
                    finish_reason = parts.finish_reason or finish_reason
                    for text in parts.texts:
                        output.append(text)
                        yield TextDelta(text=text)
        if not done and finish_reason is None:
            raise ProviderError("provider_error", "the provider ended the stream before the reply completed")
        if hits:
            yield Citations(items=file_citations(hits, citation_titles))
        yield Completed(
            usage=usage or Usage(input_tokens=input_estimate, output_tokens=estimate_tokens("".join(output))),
            usage_reported=usage is not None,
            response_id=response_id,
            incomplete=finish_reason in ("length", "content_filter"),
            incomplete_reason=finish_reason if finish_reason in ("length", "content_filter") else None,
        )

    async def complete(self, request: ProviderRequest, *, tenant_id: str) -> CompletionResult:
        endpoint = self._client.endpoint(tenant_id, request.model, accept="application/json")
        async with self._client.post(endpoint, chat_body(request, stream=False)) as response:
            doc = await self._client.read_json(response)
        if not isinstance(doc, dict):
            raise ProviderError("provider_error", "the provider sent an unexpected response shape")
        error = _chunk_error(doc)
        if error is not None:
            raise error
        choices = doc.get("choices")
        first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = first.get("message") if isinstance(first.get("message"), dict) else {}
        content = message.get("content") if isinstance(message, dict) else None
        text = content if isinstance(content, str) else ""
        usage = usage_from_chat(doc.get("usage")) or Usage(
            input_tokens=estimate_request_tokens(request), output_tokens=estimate_tokens(text)
        )
        return CompletionResult(
            text=text,
            usage=usage,
            response_id=doc.get("id") if isinstance(doc.get("id"), str) else None,
            incomplete=first.get("finish_reason") == "length",
        )
