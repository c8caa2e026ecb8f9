"""The LLM provider interface the domain calls, the stream events it yields, and the provider registry.

A provider turns a `ProviderRequest` into an async stream of `StreamEvent`s:
`(TextDelta | ToolEvent)* Citations? Completed`, or raises `ProviderError` at any point. Streams are async
generators: cancelling the consuming task (or `aclose()` on the generator, e.g. via
`contextlib.aclosing`) aborts the upstream HTTP request and releases its connection at once.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, Literal, Protocol, TypeVar

import msgspec

from minichat_host.config import ProviderConfig
from minichat_host.plugins.types import ApiParams, SearchHit, Usage

__all__ = [
    "ApiParams",
    "Cell",
    "Citation",
    "Citations",
    "CodeInterpreterTool",
    "Completed",
    "CompletionResult",
    "ContentPart",
    "FileSearchTool",
    "InputImage",
    "InputMessage",
    "InputText",
    "LlmProvider",
    "LocalSearch",
    "LocalSheetReader",
    "OutputText",
    "ProviderError",
    "ProviderErrorCode",
    "ProviderRegistry",
    "ProviderRequest",
    "SearchHit",
    "Span",
    "StreamEvent",
    "TextDelta",
    "Tool",
    "ToolEvent",
    "ToolName",
    "UnknownProviderError",
    "Usage",
    "WebSearchTool",
    "build_provider",
    "estimate_request_tokens",
    "estimate_tokens",
    "validate_provider_config",
]


# --- request --------------------------------------------------------------------------------------
class _Tagged(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="type"):
    """Content parts and tools encode with the OpenAI `type` discriminator, so they go on the wire as-is."""


class InputText(_Tagged, tag="input_text"):
    text: str


class OutputText(_Tagged, tag="output_text"):
    """Text of an earlier assistant message in the history."""

    text: str


class InputImage(_Tagged, tag="input_image"):
    """An image: a `data:` URL (or https URL) in `image_url`, or a provider file id in `file_id`."""

    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["low", "high", "auto"] | None = None


ContentPart = InputText | OutputText | InputImage


class InputMessage(msgspec.Struct, kw_only=True):
    role: Literal["user", "assistant", "system"]
    content: list[ContentPart]

    def text(self) -> str:
        """The message's text parts joined by blank lines (images left out)."""
        return "\n\n".join(p.text for p in self.content if isinstance(p, InputText | OutputText))


class FileSearchTool(_Tagged, tag="file_search"):
    vector_store_ids: list[str]
    max_num_results: int | None = None
    filters: dict[str, Any] | None = None


class WebSearchTool(_Tagged, tag="web_search"):
    search_context_size: Literal["low", "medium", "high"] = "low"


class CodeInterpreterTool(_Tagged, tag="code_interpreter"):
    file_ids: list[str] = msgspec.field(default_factory=list)


Tool = FileSearchTool | WebSearchTool | CodeInterpreterTool
ToolT = TypeVar("ToolT", FileSearchTool, WebSearchTool, CodeInterpreterTool)


class ProviderRequest(msgspec.Struct, kw_only=True):
    """One model call. `model` is the catalog entry's `provider_model_id` (an Azure deployment name on Azure).

    `citation_titles` (attachment_id -> the user's filename) is never sent upstream: it titles file
    citations, because the provider only knows the stored name `{chat_id}_{attachment_id}.{ext}`.
    """

    model: str
    input: list[InputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    tools: list[Tool] = msgspec.field(default_factory=list)
    api_params: ApiParams = msgspec.field(default_factory=ApiParams)
    user: str = ""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    citation_titles: dict[str, str] = msgspec.field(default_factory=dict)

    def last_user_text(self) -> str:
        for message in reversed(self.input):
            if message.role == "user":
                return message.text()
        return ""

    def tool(self, kind: type[ToolT]) -> ToolT | None:
        for tool in self.tools:
            if isinstance(tool, kind):
                return tool
        return None


# --- stream events --------------------------------------------------------------------------------
class _Event(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="kind"):
    pass


class TextDelta(_Event, tag="text"):
    text: str


ToolName = Literal["file_search", "web_search", "code_interpreter"]


class ToolEvent(_Event, tag="tool"):
    """A hosted tool started or finished. Done details: file_search `{files_searched}`, code_interpreter
    `{output}`; web_search has none. Each finished call is one `done` (count them for tool quotas)."""

    phase: Literal["start", "done"]
    name: ToolName
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class Span(msgspec.Struct, kw_only=True):
    start: int
    end: int


class Citation(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One source, in the shape of the SSE `citations` item (null optionals omitted)."""

    source: Literal["file", "web"]
    title: str
    snippet: str  # required on the wire, even when empty (no default, so never omitted)
    url: str | None = None
    attachment_id: str | None = None
    score: float | None = None
    span: Span | None = None


class Citations(_Event, tag="citations"):
    """All citations of the response, emitted once (when non-empty) right before `Completed`."""

    items: list[Citation]


class Completed(_Event, tag="completed"):
    """The terminal success event. `incomplete` = stopped early (max tokens, content filter) but still done.

    `usage_reported` is False when the provider sent no usage and the numbers are estimated from bytes.
    """

    usage: Usage
    response_id: str | None = None
    incomplete: bool = False
    incomplete_reason: str | None = None
    usage_reported: bool = True


StreamEvent = TextDelta | ToolEvent | Citations | Completed


class CompletionResult(msgspec.Struct, kw_only=True):
    text: str
    usage: Usage
    response_id: str | None = None
    incomplete: bool = False


ProviderErrorCode = Literal["provider_error", "provider_timeout", "rate_limited", "context_length_exceeded"]


class ProviderError(Exception):
    """A failed model call: `code` is the SSE error code, `status` the upstream HTTP status if any."""

    def __init__(self, code: ProviderErrorCode, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code: ProviderErrorCode = code
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"ProviderError(code={self.code!r}, message={self.message!r}, status={self.status!r})"


class UnknownProviderError(ProviderError):
    """The model's `provider_id` is not a key of the `providers` config."""

    def __init__(self, provider_id: str) -> None:
        super().__init__("provider_error", f"provider {provider_id!r} is not configured")
        self.provider_id = provider_id


# --- the interface --------------------------------------------------------------------------------
class LlmProvider(Protocol):
    def stream(self, request: ProviderRequest, *, tenant_id: str) -> AsyncIterator[StreamEvent]:
        """Stream the reply; raises ProviderError. Stop early with `aclose()` or by cancelling the task."""
        ...

    async def complete(self, request: ProviderRequest, *, tenant_id: str) -> CompletionResult:
        """One non-streaming call (thread summaries); raises ProviderError."""
        ...

    async def aclose(self) -> None:
        """Release the HTTP session (idempotent)."""
        ...


Cell = str | int | float | bool | None
# `(tenant_id, vector_store_id, query, max_results) -> hits`: the local storage's search.
LocalSearch = Callable[[str, str, str, int], Awaitable[list[SearchHit]]]
# `(tenant_id, file_id) -> rows`: the cells of a stored spreadsheet (first sheet).
LocalSheetReader = Callable[[str, str], Awaitable[list[list[Cell]]]]


def estimate_tokens(text: str) -> int:
    """The conservative byte estimate used when a provider reports no usage: ceil(utf-8 bytes / 4)."""
    return math.ceil(len(text.encode("utf-8")) / 4)


def estimate_request_tokens(request: ProviderRequest) -> int:
    """Input tokens estimated from the instructions and every text part (images not counted)."""
    texts = [request.instructions or "", *(message.text() for message in request.input)]
    return estimate_tokens("\n".join(text for text in texts if text))


# --- configuration --------------------------------------------------------------------------------
TENANT_OVERRIDE_KEYS: Final = frozenset({"base_url", "api_key", "api_version", "api_path"})


def validate_provider_config(provider_id: str, cfg: ProviderConfig) -> None:
    """Raise ValueError (naming the key path) for a provider config that cannot work."""
    path = f"$.providers.{provider_id}"
    if cfg.kind != "local" and not cfg.base_url:
        raise ValueError(f"{path}.base_url is required for kind {cfg.kind!r}")
    if cfg.base_url and not cfg.base_url.startswith(("http://", "https://")):
        raise ValueError(f"{path}.base_url must start with http:// or https://")
    if cfg.kind != "local" and not cfg.api_path.startswith("/"):
        raise ValueError(f"{path}.api_path must start with '/'")
    for tenant, overrides in cfg.tenant_overrides.items():
        unknown = sorted(set(overrides) - TENANT_OVERRIDE_KEYS)
        if unknown:
            allowed = ", ".join(sorted(TENANT_OVERRIDE_KEYS))
            raise ValueError(
                f"{path}.tenant_overrides.{tenant}: unknown key(s) {unknown}; allowed: {allowed}"
            )


def build_provider(
    provider_id: str,
    cfg: ProviderConfig,
    *,
    local_search: LocalSearch | None = None,
    local_sheet_reader: LocalSheetReader | None = None,
    local_token_delay_seconds: float = 0.0,
) -> LlmProvider:
    """Build the adapter for `cfg.kind`. Raises ValueError for an unusable config."""
    validate_provider_config(provider_id, cfg)
    # Imported here: the adapters import this module for the shared types.
    if cfg.kind == "local":
        from minichat_host.providers.local import LocalProvider

        return LocalProvider(
            local_search=local_search,
            local_sheet_reader=local_sheet_reader,
            token_delay_seconds=local_token_delay_seconds,
        )
    if cfg.kind == "openai_responses":
        from minichat_host.providers.openai_responses import OpenAIResponsesProvider

        return OpenAIResponsesProvider(provider_id, cfg)
    from minichat_host.providers.openai_chat import OpenAIChatProvider

    return OpenAIChatProvider(provider_id, cfg, local_search=local_search)


class ProviderRegistry:
    """One per app: builds each configured provider on first use and closes them all on shutdown.

    Providers without hosted tools (local, openai_chat) search files and read spreadsheets client-side:
    `local_search` / `local_sheet_reader` serve every provider, or `local_search_for(provider_id)` /
    `local_sheet_reader_for(provider_id)` choose per provider (None = that provider gets none, e.g. an
    openai_chat provider whose files live on OpenAI, where a local search would find nothing).
    """

    def __init__(
        self,
        providers: dict[str, ProviderConfig],
        *,
        local_search: LocalSearch | None = None,
        local_sheet_reader: LocalSheetReader | None = None,
        local_search_for: Callable[[str], LocalSearch | None] | None = None,
        local_sheet_reader_for: Callable[[str], LocalSheetReader | None] | None = None,
        local_token_delay_seconds: float = 0.0,
    ) -> None:
        for provider_id, cfg in providers.items():
            validate_provider_config(provider_id, cfg)
        self._configs = dict(providers)
        self._local_search_for = local_search_for or (lambda _provider_id: local_search)
        self._local_sheet_reader_for = local_sheet_reader_for or (lambda _provider_id: local_sheet_reader)
        self._local_token_delay_seconds = local_token_delay_seconds
        self._built: dict[str, LlmProvider] = {}
        self._closed = False

    def provider_ids(self) -> list[str]:
        return list(self._configs)

    def config(self, provider_id: str) -> ProviderConfig:
        try:
            return self._configs[provider_id]
        except KeyError:
            raise UnknownProviderError(provider_id) from None

    def get(self, provider_id: str) -> LlmProvider:
        """The provider for `provider_id`; raises UnknownProviderError when it is not configured."""
        if self._closed:
            raise ProviderError("provider_error", "the provider registry is shut down")
        provider = self._built.get(provider_id)
        if provider is None:
            provider = build_provider(
                provider_id,
                self.config(provider_id),
                local_search=self._local_search_for(provider_id),
                local_sheet_reader=self._local_sheet_reader_for(provider_id),
                local_token_delay_seconds=self._local_token_delay_seconds,
            )
            self._built[provider_id] = provider
        return provider

    def build_all(self) -> None:
        """Build every configured provider now (`get` builds on first use otherwise)."""
        for provider_id in self._configs:
            self.get(provider_id)

    async def aclose(self) -> None:
        self._closed = True
        built, self._built = list(self._built.values()), {}
        await asyncio.gather(*(p.aclose() for p in built), return_exceptions=True)
