"""HTTP client for the OpenAI and Azure OpenAI Files + Vector Stores APIs, shared by the storage plugins.

| | OpenAI (`flavor="openai"`) | Azure (`flavor="azure"`) |
|---|---|---|
| auth | `Authorization: Bearer <key>` | `api-key: <key>` |
| files | `{base}/v1/files[/{id}]` | `{base}/openai/files[/{id}]?api-version=V` |
| vector stores | `{base}/v1/vector_stores[/{id}[/files]]` | `{base}/openai/vector_stores/...?api-version=V` |

Endpoints and keys come from the `providers` config entries whose `storage` names the plugin's vendor
(`tenant_overrides` may replace base_url / api_key / api_version per tenant). Failures map to the plugin
errors the host understands: 5xx, 408, 429, timeouts and transport errors -> `StorageUnavailableError`
(transient, retried); other 4xx -> `StorageRejectedError` with code `<op>_failed` (`file_too_large` for
a 413 upload); a 2xx body that is not the expected JSON -> `StorageRejectedError("response_parse_error")`.
Deletes treat 404 as already deleted.
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
from pathlib import Path
from typing import Any, Literal, NoReturn

import aiohttp
import msgspec

from minichat_host.config import ProviderConfig
from minichat_host.plugins.errors import PermanentError, TransientError
from minichat_host.plugins.types import StoredFile
from minichat_host.providers.upstream import ERROR_BODY_LIMIT, parse_error_body

Flavor = Literal["openai", "azure"]
_EXTENSION = re.compile(r"^[A-Za-z0-9]{1,16}$")
_MESSAGE_LIMIT = 300


class StorageRejectedError(PermanentError):
    """The provider refused the request (4xx) or answered nonsense; retrying will not help."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = status


class StorageUnavailableError(TransientError):
    """The provider is down, slow or throttling; the same call may succeed later."""

    code = "provider_unavailable"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(f"provider_unavailable: {message}")
        self.status = status


class StorageConfigError(PermanentError):
    """The call names a provider this storage does not serve, or one configured without what it needs."""

    code = "configuration_error"


def provider_file_name(chat_id: str, attachment_id: str, filename: str, content_type: str) -> str:
    """`{chat_id}_{attachment_id}.{ext}`: the provider never sees the user's filename, only its extension."""
    extension = Path(filename).suffix.lstrip(".").lower()
    if not _EXTENSION.match(extension):
        guessed = mimetypes.guess_extension(content_type.split(";")[0].strip()) or ""
        extension = guessed.lstrip(".").lower()
    if not _EXTENSION.match(extension):
        extension = "bin"
    return f"{chat_id}_{attachment_id}.{extension}"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


class FilesApiClient:
    def __init__(
        self,
        flavor: Flavor,
        vendor: str,
        providers: dict[str, ProviderConfig],
        *,
        request_timeout_seconds: float = 60.0,
    ) -> None:
        """`providers`: the whole `providers` config; only entries with `storage == vendor` are served."""
        self.flavor: Flavor = flavor
        self.vendor = vendor
        self.request_timeout_seconds = request_timeout_seconds
        self._providers = {pid: cfg for pid, cfg in providers.items() if cfg.storage == vendor}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        for provider_id, cfg in self._providers.items():
            if not cfg.base_url:
                raise ValueError(
                    f"providers.{provider_id}.base_url is required: its files are stored with {vendor!r}"
                )
            if flavor == "azure" and not cfg.api_version:
                raise ValueError(
                    f"providers.{provider_id}.api_version is required for Azure file and vector store "
                    "calls (e.g. 2025-03-01-preview)"
                )

    @property
    def provider_ids(self) -> list[str]:
        return list(self._providers)

    # --- plumbing --------------------------------------------------------------------------------
    def _config(self, provider_id: str) -> ProviderConfig:
        cfg = self._providers.get(provider_id)
        if cfg is None:
            raise StorageConfigError(
                f"configuration_error: provider {provider_id!r} does not store its files with {self.vendor!r}"
            )
        return cfg

    def _session(self, provider_id: str, cfg: ProviderConfig) -> aiohttp.ClientSession:
        session = self._sessions.get(provider_id)
        if session is None or session.closed:
            timeout = aiohttp.ClientTimeout(
                total=self.request_timeout_seconds, sock_connect=cfg.connect_timeout_seconds
            )
            session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)
            self._sessions[provider_id] = session
        return session

    def _target(
        self, provider_id: str, tenant_id: str, path: str
    ) -> tuple[str, dict[str, str], dict[str, str]]:
        cfg = self._config(provider_id)
        overrides = cfg.tenant_overrides.get(tenant_id, {})
        base_url = (overrides.get("base_url") or cfg.base_url).rstrip("/")
        api_key = overrides.get("api_key", cfg.api_key)
        headers = {"Accept": "application/json"}
        params: dict[str, str] = {}
        if self.flavor == "azure":
            if api_key:
                headers["api-key"] = api_key
            params["api-version"] = overrides.get("api_version") or cfg.api_version
            url = f"{base_url}/openai{path}"
        else:
            if api_key and cfg.auth != "none":
                headers["Authorization"] = f"Bearer {api_key}"
            url = f"{base_url}/v1{path}"
        return url, headers, params

    async def _request(
        self,
        op: str,
        method: str,
        provider_id: str,
        tenant_id: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        data: aiohttp.FormData | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """One call; returns the decoded JSON (None for a 404 when `missing_ok`)."""
        url, headers, params = self._target(provider_id, tenant_id, path)
        session = self._session(provider_id, self._config(provider_id))
        body: Any = data
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            body = msgspec.json.encode(json_body)
        try:
            async with session.request(method, url, params=params, headers=headers, data=body) as response:
                if missing_ok and response.status == 404:
                    return None
                if response.status >= 300:
                    raw = await response.content.read(ERROR_BODY_LIMIT)
                    _raise_for_status(op, response.status, raw)
                raw = await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise StorageUnavailableError(f"{op} timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise StorageUnavailableError(f"{op}: {_clip(str(exc)) or type(exc).__name__}") from exc
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise StorageRejectedError("response_parse_error", f"{op}: the response is not JSON") from None

    @staticmethod
    def _id_of(op: str, doc: Any) -> str:
        if isinstance(doc, dict) and isinstance(doc.get("id"), str) and doc["id"]:
            return str(doc["id"])
        raise StorageRejectedError("response_parse_error", f"{op}: the response has no `id`")

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    # --- operations ------------------------------------------------------------------------------
    async def upload_file(
        self,
        *,
        provider_id: str,
        tenant_id: str,
        chat_id: str,
        attachment_id: str,
        filename: str,
        content_type: str,
        path: str,
        purpose: str,
    ) -> StoredFile:
        """Multipart `purpose` + `file` (streamed from `path`); the provider's file id and size."""
        source = Path(path)
        try:
            size = (await asyncio.to_thread(source.stat)).st_size
            handle = await asyncio.to_thread(source.open, "rb")
        except OSError as exc:
            raise StorageRejectedError(
                "upload_file_failed", f"cannot read {source.name}: {exc.strerror}"
            ) from exc
        with handle:
            form = aiohttp.FormData()
            form.add_field("purpose", purpose)
            form.add_field(
                "file",
                handle,
                filename=provider_file_name(chat_id, attachment_id, filename, content_type),
                content_type=content_type or "application/octet-stream",
            )
            doc = await self._request("upload_file", "POST", provider_id, tenant_id, "/files", data=form)
        file_id = self._id_of("upload_file", doc)
        reported = doc.get("bytes")
        return StoredFile(file_id=file_id, size_bytes=reported if isinstance(reported, int) else size)

    async def delete_file(self, *, provider_id: str, tenant_id: str, file_id: str) -> None:
        await self._request(
            "delete_file", "DELETE", provider_id, tenant_id, f"/files/{_segment(file_id)}", missing_ok=True
        )

    async def create_vector_store(self, *, provider_id: str, tenant_id: str, chat_id: str) -> str:
        doc = await self._request(
            "create_vector_store",
            "POST",
            provider_id,
            tenant_id,
            "/vector_stores",
            json_body={
                "name": f"minichat-chat-{chat_id}",
                "metadata": {"tenant_id": tenant_id, "chat_id": chat_id},
            },
        )
        return self._id_of("create_vector_store", doc)

    async def add_file_to_vector_store(
        self,
        *,
        provider_id: str,
        tenant_id: str,
        vector_store_id: str,
        file_id: str,
        attributes: dict[str, str],
    ) -> None:
        doc = await self._request(
            "add_file_to_vector_store",
            "POST",
            provider_id,
            tenant_id,
            f"/vector_stores/{_segment(vector_store_id)}/files",
            json_body={"file_id": file_id, "attributes": dict(attributes)},
        )
        if not isinstance(doc, dict):
            raise StorageRejectedError(
                "response_parse_error", "add_file_to_vector_store: unexpected response"
            )
        if doc.get("status") == "failed":
            error = doc.get("last_error")
            detail = error.get("message") if isinstance(error, dict) else None
            raise StorageRejectedError(
                "add_file_to_vector_store_failed",
                _clip(str(detail or "the provider could not index the file")),
            )

    async def delete_vector_store(self, *, provider_id: str, tenant_id: str, vector_store_id: str) -> None:
        await self._request(
            "delete_vector_store",
            "DELETE",
            provider_id,
            tenant_id,
            f"/vector_stores/{_segment(vector_store_id)}",
            missing_ok=True,
        )


def _segment(value: str) -> str:
    """Provider ids go into URL paths: refuse anything that could change the path."""
    if not value or "/" in value or "?" in value or "#" in value or value in (".", ".."):
        raise StorageRejectedError("invalid_id", f"not a provider id: {value!r}")
    return value


def _raise_for_status(op: str, status: int, raw: bytes) -> NoReturn:
    _, message = parse_error_body(raw)
    detail = f"HTTP {status}: {_clip(message) or 'no error details'}"
    if status >= 500 or status in (408, 429):
        raise StorageUnavailableError(f"{op}: {detail}", status=status)
    if op == "upload_file" and status == 413:
        raise StorageRejectedError("file_too_large", detail, status=status)
    raise StorageRejectedError(f"{op}_failed", detail, status=status)
