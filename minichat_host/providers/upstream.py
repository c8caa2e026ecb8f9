"""HTTP plumbing shared by the OpenAI-style adapters: endpoint and auth resolution (with per-tenant
overrides), per provider one lazily created `Http1Client` for the model calls and one `aiohttp.ClientSession`
for the file calls, SSE reading, and the mapping of transport failures and HTTP statuses to `ProviderError`.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
import msgspec

from minichat_host.config import ProviderConfig
from minichat_host.providers import http1
from minichat_host.providers.base import ProviderError, ProviderErrorCode
from minichat_host.providers.sse import SseEvent, SseParser

ERROR_BODY_LIMIT = 64 * 1024
JSON_BODY_LIMIT = 64 * 1024 * 1024  # a non-streamed model response larger than this is refused
_MESSAGE_LIMIT = 500
_CONTEXT_LENGTH = re.compile(
    r"context[ _-]?(length|window)|maximum context|too many (input )?tokens|prompt is too long", re.IGNORECASE
)
_CONTEXT_LENGTH_CODES = frozenset(
    {"context_length_exceeded", "context_window_exceeded", "string_above_max_length"}
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    params: dict[str, str]
    headers: dict[str, str]


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def error_code_from_upstream(code: str | None, message: str) -> ProviderErrorCode:
    """Map an upstream error code / message (error bodies, `error` events, `response.failed`) to ours."""
    lowered = (code or "").lower()
    if lowered in _CONTEXT_LENGTH_CODES or _CONTEXT_LENGTH.search(message):
        return "context_length_exceeded"
    if lowered in ("rate_limit_exceeded", "rate_limited", "429", "too_many_requests"):
        return "rate_limited"
    if lowered in ("timeout", "request_timeout", "408", "504"):
        return "provider_timeout"
    return "provider_error"


def parse_error_body(raw: bytes) -> tuple[str | None, str]:
    """(code, message) from an OpenAI / Azure / gateway error body; tolerant of anything."""
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None, raw.decode("utf-8", errors="replace").strip()
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type")
        message = error.get("message")
        return (str(code) if code is not None else None), (str(message) if message else "")
    if isinstance(error, str):
        return None, error
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return None, doc["message"]
    return None, raw.decode("utf-8", errors="replace").strip()


def error_from_status(status: int, raw: bytes) -> ProviderError:
    code, message = parse_error_body(raw)
    detail = _clip(message) or "no error details"
    text = f"upstream HTTP {status}: {detail}"
    if status == 429:
        return ProviderError("rate_limited", text, status=status)
    if 400 <= status < 500 and error_code_from_upstream(code, message) == "context_length_exceeded":
        return ProviderError("context_length_exceeded", text, status=status)
    return ProviderError("provider_error", text, status=status)


def error_from_exception(exc: BaseException, *, during: str) -> ProviderError:
    """Transport failures: connect/read timeouts -> provider_timeout, everything else -> provider_error."""
    if isinstance(exc, http1.ConnectTimeout):
        return ProviderError("provider_timeout", f"connecting to the provider timed out ({during})")
    if isinstance(exc, http1.ConnectFailed):
        return ProviderError("provider_error", f"cannot connect to the provider: {_clip(str(exc))}")
    if isinstance(exc, http1.ConnectionBroken):
        return ProviderError("provider_error", f"the provider connection broke ({during}): {_clip(str(exc))}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ProviderError("provider_timeout", f"connecting to the provider timed out ({during})")
    if isinstance(exc, asyncio.TimeoutError):  # SocketTimeoutError / ServerTimeoutError: read stall
        return ProviderError(
            "provider_timeout", f"the provider sent nothing within the read timeout ({during})"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ProviderError("provider_error", f"cannot connect to the provider: {_clip(str(exc))}")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return ProviderError("provider_error", f"the provider connection broke ({during})")
    return ProviderError(
        "provider_error", f"provider transport error ({during}): {_clip(str(exc)) or type(exc).__name__}"
    )


class UpstreamClient:
    """Everything a provider needs to talk HTTP to its upstream, for one `providers.<id>` entry."""

    def __init__(self, provider_id: str, cfg: ProviderConfig, *, api_path: str | None = None) -> None:
        self.provider_id = provider_id
        self.cfg = cfg
        self._api_path = api_path or cfg.api_path
        self._session: aiohttp.ClientSession | None = None
        self._http: http1.Http1Client | None = None
        self._closed = False

    # --- session ---------------------------------------------------------------------------------
    def session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ProviderError("provider_error", f"provider {self.provider_id!r} is shut down")
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.cfg.connect_timeout_seconds,
                # Applies to every socket read: a stall between two chunks longer than this fails the call.
                sock_read=self.cfg.read_timeout_seconds,
            )
            # No pool cap: concurrency is bounded by the host (one stream per running turn).
            connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                timeout=timeout, connector=connector, raise_for_status=False, auto_decompress=True
            )
        return self._session

    def http(self) -> http1.Http1Client:
        """The client for the model calls (streamed and plain POSTs)."""
        if self._closed:
            raise ProviderError("provider_error", f"provider {self.provider_id!r} is shut down")
        if self._http is None:
            self._http = http1.Http1Client(
                connect_timeout=self.cfg.connect_timeout_seconds,
                # Applies to every wait for bytes: a stall between two chunks longer than this fails the call.
                read_timeout=self.cfg.read_timeout_seconds,
            )
        return self._http

    async def aclose(self) -> None:
        self._closed = True
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- endpoint --------------------------------------------------------------------------------
    def endpoint(self, tenant_id: str, model: str, *, accept: str) -> Endpoint:
        overrides = self.cfg.tenant_overrides.get(tenant_id, {})
        base_url = (overrides.get("base_url") or self.cfg.base_url).rstrip("/")
        api_key = overrides.get("api_key", self.cfg.api_key)
        api_version = overrides.get("api_version", self.cfg.api_version)
        path = overrides.get("api_path") or self._api_path
        path = path.replace("{model}", quote(model, safe=""))
        path, _, query = path.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        # Azure's dated APIs need `api-version`; its `/openai/v1/` surface is versionless.
        if api_version and "api-version" not in params and not path.startswith("/openai/v1/"):
            params["api-version"] = api_version
        headers = {"Accept": accept, "Content-Type": "application/json"}
        if self.cfg.auth == "bearer" and api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        elif self.cfg.auth == "api-key" and api_key:
            headers["api-key"] = api_key
        return Endpoint(url=base_url + path, params=params, headers=headers)

    # --- requests --------------------------------------------------------------------------------
    def post(self, endpoint: Endpoint, body: dict[str, Any]) -> PostedRequest:
        """`async with client.post(endpoint, body) as response:` POST JSON; the response is a 2xx one. Any
        failure (or cancellation) closes the connection at once."""
        return PostedRequest(self, endpoint, body)

    async def read_json(self, response: http1.Http1Response) -> Any:
        try:
            raw = await response.read(JSON_BODY_LIMIT)
        except (TimeoutError, http1.HttpClientError, OSError) as exc:
            raise error_from_exception(exc, during="reading the response") from exc
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise ProviderError("provider_error", "the provider sent a response that is not JSON") from None


class PostedRequest:
    """`UpstreamClient.post`'s context manager: a small object rather than an `@asynccontextmanager`
    generator, whose suspended frame (and its entry in the loop's async generator set) every open stream
    kept for its whole length (bench/memory.py)."""

    __slots__ = ("_body", "_client", "_endpoint", "_response")

    def __init__(self, client: UpstreamClient, endpoint: Endpoint, body: dict[str, Any]) -> None:
        self._client = client
        self._endpoint: Endpoint | None = endpoint
        self._body: dict[str, Any] | None = body
        self._response: http1.Http1Response | None = None

    async def __aenter__(self) -> http1.Http1Response:
        endpoint, body = self._endpoint, self._body
        assert endpoint is not None and body is not None, "a request is posted once"
        self._endpoint = self._body = None  # sent: not kept for the length of a stream
        payload = msgspec.json.encode(body)
        del body
        try:
            http = self._client.http()
            response = await http.post(endpoint.url, endpoint.params, endpoint.headers, payload)
        except (TimeoutError, http1.HttpClientError, OSError) as exc:
            raise error_from_exception(exc, during="sending the request") from exc
        if response.status >= 300:
            try:
                raw = await response.read(ERROR_BODY_LIMIT)
            except (TimeoutError, http1.HttpClientError, OSError):
                raw = b""
            response.release()
            raise error_from_status(response.status, raw)
        self._response = response
        return response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        response, self._response = self._response, None
        if response is None:
            return
        if exc_type is not None:
            response.close()
        else:
            # Read to its end, the connection goes back to the pool; with unread bytes it is closed.
            response.release()


async def read_sse(response: http1.Http1Response, parser: SseParser) -> list[SseEvent] | None:
    """The SSE events the response's next bytes complete, as soon as they arrive (possibly none: part of
    an event); None at the end of the body. Transport failures come out as `ProviderError`."""
    try:
        chunk = await response.read_chunk()
    except (TimeoutError, http1.HttpClientError, OSError) as exc:
        raise error_from_exception(exc, during="streaming") from exc
    return parser.feed(chunk) if chunk else None


def decode_event_json(event: SseEvent) -> dict[str, Any]:
    try:
        doc = msgspec.json.decode(event.data)
    except msgspec.DecodeError:
        raise ProviderError(
            "provider_error", "the provider sent a malformed stream event (not JSON)"
        ) from None
    if not isinstance(doc, dict):
        raise ProviderError("provider_error", "the provider sent a malformed stream event (not an object)")
    return doc


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
