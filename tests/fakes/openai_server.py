"""A protocol-faithful fake of the OpenAI and Azure OpenAI HTTP APIs, for tests and benchmarks.

It speaks the real wire format (checked against the official `openai` SDK in tests/providers) for:
the Responses API (streamed typed SSE events and plain JSON), Chat Completions (`data:` chunks ending in
`data: [DONE]`, the usage chunk with `stream_options.include_usage`), Files (multipart upload, delete)
and Vector Stores (create, add file with attributes, delete), under three route families:

- OpenAI:    `/v1/...`              `Authorization: Bearer <key>`
- Azure:     `/openai/...`          `api-key: <key>` and an `api-version` query parameter
             (`/openai/deployments/{deployment}/responses|chat/completions` included)
- Azure v1:  `/openai/v1/...`       `api-key: <key>` (or Bearer), no api-version

In-process use (tests)::

    fake = FakeOpenAI()
    base_url = await fake.start()
    fake.script(Script(text="Hi there", token_gap_ms=5))     # the next generation call
    fake.fail_next("files.create", times=2, status=500)      # storage faults
    ...
    record = fake.last("responses")                          # what was sent, and how it ended
    await fake.stop()

Standalone (benchmarks)::

    python tests/fakes/openai_server.py --port 8999 --ttft-ms 50 --token-gap-ms 5 --tokens 200

prints `FAKE_OPENAI_URL=http://127.0.0.1:8999` and serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import re
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from aiohttp import BodyPartReader, web

DEFAULT_API_KEY = "sk-test"
DEFAULT_TEXT = "Hello from the fake OpenAI server."
AZURE_UNAUTHORIZED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)
Family = Literal["openai", "azure", "azure_v1"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- scripting ------------------------------------------------------------------------------------
@dataclass
class FileSearchScript:
    """A hosted file_search call. `results=None` = built from the request's vector stores (attributes
    included), so a real upload -> vector store -> chat flow cites the uploaded files."""

    results: list[dict[str, Any]] | None = None
    queries: list[str] = field(default_factory=lambda: ["user question"])
    cite: bool = True


@dataclass
class WebSearchScript:
    query: str = "latest news"
    sources: list[tuple[str, str]] = field(default_factory=lambda: [("https://example.com/a", "Example A")])


@dataclass
class CodeInterpreterScript:
    code: str = "print(1 + 1)"
    output: str = "2"


ToolScript = FileSearchScript | WebSearchScript | CodeInterpreterScript


@dataclass
class Script:
    """How the next generation call (Responses or Chat Completions) behaves.

    Faults: `status` fails before the first token with that HTTP status (OpenAI error body);
    `fail_after=N` fails after N text deltas (`fail_mode`: a `response.failed` event, an `error` event,
    a dropped connection, or a clean end of stream with no terminal event); `stall_at=N` goes silent for
    `stall_seconds` after N deltas (0 = right after the headers), `stall_before_headers` before sending
    anything; `malformed_after=N` sends a broken event and ends the stream.
    """

    text: str = DEFAULT_TEXT
    tokens: list[str] | None = None
    ttft_ms: float = 0.0
    token_gap_ms: float = 0.0
    status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_type: str | None = None
    fail_after: int | None = None
    fail_mode: Literal["response_failed", "error_event", "drop", "eof"] = "response_failed"
    stall_at: int | None = None
    stall_before_headers: bool = False
    stall_seconds: float = 30.0
    malformed_after: int | None = None
    tools: list[ToolScript] = field(default_factory=list)
    incomplete: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    omit_usage: bool = False
    refusal: list[str] | None = None  # refusal deltas sent after the text (a model declining to answer)
    # Benchmarks: append `@<time.monotonic_ns()>` at send time to each text delta (one clock per machine).
    stamp_tokens: bool = False

    def deltas(self) -> list[str]:
        if self.tokens is not None:
            return list(self.tokens)
        return re.findall(r"\S+\s*", self.text)

    # presets for the common upstream failures
    @classmethod
    def http_error(cls, status: int, code: str | None = None, message: str | None = None) -> Script:
        return cls(status=status, error_code=code, error_message=message)

    @classmethod
    def rate_limited(cls) -> Script:
        return cls(
            status=429,
            error_code="rate_limit_exceeded",
            error_type="requests",
            error_message="Rate limit reached for requests. Please try again in 20s.",
        )

    @classmethod
    def server_error(cls) -> Script:
        return cls(
            status=500,
            error_type="server_error",
            error_message="The server had an error while processing your request. Sorry about that!",
        )

    @classmethod
    def context_length_exceeded(cls) -> Script:
        return cls(
            status=400,
            error_code="context_length_exceeded",
            error_type="invalid_request_error",
            error_message="Your input exceeds the context window of this model. Please adjust your input "
            "and try again.",
        )


@dataclass
class Fault:
    """One scripted failure of a files / vector-store call."""

    status: int = 500
    stall_seconds: float | None = None
    raw_body: bytes | None = None  # sent as-is with `status` (e.g. b"not json" with 200)


@dataclass
class RecordedRequest:
    method: str
    path: str
    op: str
    family: Family
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any = None  # the JSON body, when there was one
    form: dict[str, Any] = field(default_factory=dict)  # multipart fields; `file` -> name/type/size
    outcome: str = "pending"
    status: int | None = None
    events_sent: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_finished(self, limit_seconds: float = 10.0) -> str:
        await asyncio.wait_for(self.finished.wait(), limit_seconds)
        return self.outcome


@dataclass
class _StoredFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int


@dataclass
class _VectorStore:
    id: str
    name: str | None
    created_at: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # file_id -> attributes


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def _openai_error(
    status: int, message: str, *, type_: str, code: str | None, param: str | None = None
) -> web.Response:
    return _json({"error": {"message": message, "type": type_, "param": param, "code": code}}, status)


def _stamped(token: str) -> str:
    """The token with its send time appended (`tok3@123456789 `), for latency benchmarks."""
    body = token.rstrip()
    return f"{body}@{time.monotonic_ns()}{token[len(body) :]}"


class _ClientGone(Exception):
    """The client closed the connection while we were streaming."""


# --- the server -----------------------------------------------------------------------------------
class FakeOpenAI:
    def __init__(
        self,
        *,
        api_key: str | None = DEFAULT_API_KEY,
        default_script: Script | None = None,
        record_limit: int = 10_000,
        auto_file_search: bool = True,
    ) -> None:
        """`api_key=None` accepts any non-empty key."""
        self.api_key = api_key
        self.default_script = default_script or Script()
        self.auto_file_search = auto_file_search
        self.requests: deque[RecordedRequest] = deque(maxlen=record_limit)
        self.files: dict[str, _StoredFile] = {}
        self.vector_stores: dict[str, _VectorStore] = {}
        self._scripts: deque[Script] = deque()
        self._faults: dict[str, deque[Fault]] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # handler_cancellation: a client that disconnects cancels its handler, which records it.
        self._runner = web.AppRunner(
            self.app(), handler_cancellation=True, shutdown_timeout=1.0, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_port = self._runner.addresses[0][1]
        self.base_url = f"http://{host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- scripting -------------------------------------------------------------------------------
    def script(self, *scripts: Script) -> None:
        """Queue behaviours for the next generation calls, in order (then `default_script`)."""
        self._scripts.extend(scripts)

    def fail_next(
        self,
        op: str,
        *,
        times: int = 1,
        status: int = 500,
        stall_seconds: float | None = None,
        raw_body: bytes | None = None,
    ) -> None:
        """Make the next `times` calls of `op` fail. Ops: files.create, files.delete, vector_stores.create,
        vector_stores.files.create, vector_stores.delete (then the call succeeds again)."""
        queue = self._faults.setdefault(op, deque())
        queue.extend(
            Fault(status=status, stall_seconds=stall_seconds, raw_body=raw_body) for _ in range(times)
        )

    def seed_file(self, filename: str, content: bytes, purpose: str = "assistants") -> str:
        """Store a file as if it had been uploaded; returns its id."""
        stored = _StoredFile(
            id=self._new_id("file-"),
            filename=filename,
            purpose=purpose,
            content=content,
            created_at=int(time.time()),
        )
        self.files[stored.id] = stored
        return stored.id

    def seed_vector_store(self, files: dict[str, dict[str, Any]]) -> str:
        """Create a vector store holding `files` (file id -> attributes); returns its id."""
        store = _VectorStore(
            id=self._new_id("vs_"), name=None, created_at=int(time.time()), files=dict(files)
        )
        self.vector_stores[store.id] = store
        return store.id

    def by_op(self, op: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.op == op]

    def last(self, op: str | None = None) -> RecordedRequest:
        for record in reversed(self.requests):
            if op is None or record.op == op:
                return record
        raise LookupError(f"no recorded request for op {op!r}")

    def _next_script(self) -> Script:
        return self._scripts.popleft() if self._scripts else self.default_script

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08x}{int(time.time() * 1000) % 10_000_000:07d}"

    # --- routing and auth ------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=512 * 1024 * 1024)
        families: list[tuple[str, Family]] = [
            ("/v1", "openai"),
            ("/openai/v1", "azure_v1"),
            ("/openai", "azure"),
        ]
        for prefix, family in families:
            route = self._route
            app.router.add_post(f"{prefix}/responses", route(family, "responses", self._responses))
            app.router.add_post(f"{prefix}/chat/completions", route(family, "chat", self._chat))
            app.router.add_post(f"{prefix}/files", route(family, "files.create", self._file_create))
            app.router.add_get(f"{prefix}/files", route(family, "files.list", self._file_list))
            app.router.add_get(f"{prefix}/files/{{file_id}}", route(family, "files.get", self._file_get))
            app.router.add_delete(
                f"{prefix}/files/{{file_id}}", route(family, "files.delete", self._file_delete)
            )
            app.router.add_post(
                f"{prefix}/vector_stores", route(family, "vector_stores.create", self._vs_create)
            )
            app.router.add_get(
                f"{prefix}/vector_stores/{{vs_id}}", route(family, "vector_stores.get", self._vs_get)
            )
            app.router.add_delete(
                f"{prefix}/vector_stores/{{vs_id}}", route(family, "vector_stores.delete", self._vs_delete)
            )
            app.router.add_post(
                f"{prefix}/vector_stores/{{vs_id}}/files",
                route(family, "vector_stores.files.create", self._vs_file_add),
            )
            app.router.add_delete(
                f"{prefix}/vector_stores/{{vs_id}}/files/{{file_id}}",
                route(family, "vector_stores.files.delete", self._vs_file_delete),
            )
        app.router.add_post(
            "/openai/deployments/{deployment}/responses", self._route("azure", "responses", self._responses)
        )
        app.router.add_post(
            "/openai/deployments/{deployment}/chat/completions", self._route("azure", "chat", self._chat)
        )
        return app

    def _route(
        self,
        family: Family,
        op: str,
        handler: Callable[[web.Request, RecordedRequest], Awaitable[web.StreamResponse]],
    ) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            record = RecordedRequest(
                method=request.method,
                path=request.path,
                op=op,
                family=family,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
            )
            self.requests.append(record)
            try:
                denied = self._check_auth(request, family)
                if denied is not None:
                    record.outcome = "rejected"
                    record.status = denied.status
                    return denied
                response = await handler(request, record)
                if record.outcome == "pending":
                    record.outcome = "ok" if response.status < 400 else "http_error"
                record.status = record.status or response.status
                return response
            except web.HTTPException as exc:
                record.outcome, record.status = "http_error", exc.status
                raise
            except asyncio.CancelledError:
                record.outcome = "client_disconnected"
                raise
            except _ClientGone:
                if record.outcome != "dropped":
                    record.outcome = "client_disconnected"
                raise asyncio.CancelledError from None
            finally:
                record.finished.set()

        return wrapped

    def _key_ok(self, key: str | None) -> bool:
        return bool(key) and (self.api_key is None or key == self.api_key)

    def _check_auth(self, request: web.Request, family: Family) -> web.Response | None:
        if family == "openai":
            header = request.headers.get("Authorization", "")
            key = header[len("Bearer ") :] if header.startswith("Bearer ") else None
            if not self._key_ok(key):
                return _openai_error(
                    401,
                    "Incorrect API key provided. You can find your API key at https://platform.openai.com.",
                    type_="invalid_request_error",
                    code="invalid_api_key",
                )
            return None
        key = request.headers.get("api-key")
        bearer = request.headers.get("Authorization", "")
        if family == "azure_v1" and not key and bearer.startswith("Bearer "):
            key = bearer[len("Bearer ") :]
        if not self._key_ok(key):
            return _json({"error": {"code": "401", "message": AZURE_UNAUTHORIZED}}, 401)
        if family == "azure" and not request.query.get("api-version"):
            return _json({"error": {"code": "404", "message": "Resource not found"}}, 404)
        return None

    async def _read_json(self, request: web.Request, record: RecordedRequest) -> Any:
        raw = await request.read()
        if not raw:
            record.body = {}
            return {}
        try:
            record.body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise web.HTTPBadRequest(
                body=msgspec.json.encode(
                    {
                        "error": {
                            "message": "We could not parse the JSON body of your request.",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": None,
                        }
                    }
                ),
                content_type="application/json",
            ) from None
        return record.body

    async def _fault(self, op: str) -> web.Response | None:
        queue = self._faults.get(op)
        if not queue:
            return None
        fault = queue.popleft()
        if fault.stall_seconds:
            await asyncio.sleep(fault.stall_seconds)
        if fault.raw_body is not None:
            return web.Response(body=fault.raw_body, status=fault.status, content_type="application/json")
        if fault.status >= 500:
            return _openai_error(
                fault.status,
                "The server had an error while processing your request. Sorry about that!",
                type_="server_error",
                code=None,
            )
        return _openai_error(
            fault.status, f"scripted failure of {op}", type_="invalid_request_error", code=None
        )

    # --- files -----------------------------------------------------------------------------------
    def _file_object(self, stored: _StoredFile) -> dict[str, Any]:
        return {
            "id": stored.id,
            "object": "file",
            "bytes": len(stored.content),
            "created_at": stored.created_at,
            "filename": stored.filename,
            "purpose": stored.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }

    async def _file_create(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        if not request.content_type.startswith("multipart/form-data"):
            return _openai_error(
                400, "Expected multipart/form-data.", type_="invalid_request_error", code=None
            )
        purpose = None
        filename = None
        content = b""
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read()).decode("utf-8")
                record.form["purpose"] = purpose
            elif part.name == "file":
                content = await part.read()
                filename = part.filename
                record.form["file"] = {
                    "filename": part.filename,
                    "content_type": part.headers.get("Content-Type"),
                    "size": len(content),
                }
        fault = await self._fault("files.create")
        if fault is not None:
            return fault
        if not purpose:
            return _openai_error(
                400,
                "Missing required parameter: 'purpose'.",
                type_="invalid_request_error",
                code="missing_required_parameter",
                param="purpose",
            )
        if filename is None:
            return _openai_error(
                400,
                "Missing required parameter: 'file'.",
                type_="invalid_request_error",
                code="missing_required_parameter",
                param="file",
            )
        stored = _StoredFile(
            id=self._new_id("file-"),
            filename=filename,
            purpose=purpose,
            content=content,
            created_at=int(time.time()),
        )
        self.files[stored.id] = stored
        return _json(self._file_object(stored))

    async def _file_list(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        data = [self._file_object(stored) for stored in self.files.values()]
        return _json({"object": "list", "data": data, "has_more": False})

    async def _file_get(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        stored = self.files.get(request.match_info["file_id"])
        if stored is None:
            return self._no_such("File", request.match_info["file_id"])
        return _json(self._file_object(stored))

    async def _file_delete(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        fault = await self._fault("files.delete")
        if fault is not None:
            return fault
        file_id = request.match_info["file_id"]
        if self.files.pop(file_id, None) is None:
            return self._no_such("File", file_id)
        return _json({"id": file_id, "object": "file", "deleted": True})

    @staticmethod
    def _no_such(kind: str, object_id: str) -> web.Response:
        return _openai_error(
            404, f"No such {kind} object: {object_id}", type_="invalid_request_error", code=None, param="id"
        )

    # --- vector stores ---------------------------------------------------------------------------
    def _vs_object(self, store: _VectorStore) -> dict[str, Any]:
        usage = sum(len(self.files[f].content) for f in store.files if f in self.files)
        count = len(store.files)
        return {
            "id": store.id,
            "object": "vector_store",
            "created_at": store.created_at,
            "name": store.name,
            "usage_bytes": usage,
            "file_counts": {
                "in_progress": 0,
                "completed": count,
                "failed": 0,
                "cancelled": 0,
                "total": count,
            },
            "status": "completed",
            "expires_after": None,
            "expires_at": None,
            "last_active_at": store.created_at,
            "metadata": {},
        }

    async def _vs_create(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        body = await self._read_json(request, record)
        fault = await self._fault("vector_stores.create")
        if fault is not None:
            return fault
        name = body.get("name") if isinstance(body, dict) else None
        store = _VectorStore(id=self._new_id("vs_"), name=name, created_at=int(time.time()))
        self.vector_stores[store.id] = store
        return _json(self._vs_object(store))

    async def _vs_get(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        store = self.vector_stores.get(request.match_info["vs_id"])
        if store is None:
            return self._no_such("vector store", request.match_info["vs_id"])
        return _json(self._vs_object(store))

    async def _vs_delete(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        fault = await self._fault("vector_stores.delete")
        if fault is not None:
            return fault
        vs_id = request.match_info["vs_id"]
        if self.vector_stores.pop(vs_id, None) is None:
            return self._no_such("vector store", vs_id)
        return _json({"id": vs_id, "object": "vector_store.deleted", "deleted": True})

    async def _vs_file_add(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        body = await self._read_json(request, record)
        fault = await self._fault("vector_stores.files.create")
        if fault is not None:
            return fault
        store = self.vector_stores.get(request.match_info["vs_id"])
        if store is None:
            return self._no_such("vector store", request.match_info["vs_id"])
        file_id = body.get("file_id") if isinstance(body, dict) else None
        if not isinstance(file_id, str) or file_id not in self.files:
            return self._no_such("File", str(file_id))
        attributes = body.get("attributes") or {}
        store.files[file_id] = attributes
        return _json(
            {
                "id": file_id,
                "object": "vector_store.file",
                "usage_bytes": len(self.files[file_id].content),
                "created_at": int(time.time()),
                "vector_store_id": store.id,
                "status": "completed",
                "last_error": None,
                "attributes": attributes,
                "chunking_strategy": {
                    "type": "static",
                    "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
                },
            }
        )

    async def _vs_file_delete(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        store = self.vector_stores.get(request.match_info["vs_id"])
        file_id = request.match_info["file_id"]
        if store is None or store.files.pop(file_id, None) is None:
            return self._no_such("vector store file", file_id)
        return _json({"id": file_id, "object": "vector_store.file.deleted", "deleted": True})

    # --- generation: shared ----------------------------------------------------------------------
    @staticmethod
    def _error_response(script: Script) -> web.Response:
        status = script.status or 500
        if status >= 500:
            default_type, default_message = "server_error", "The server had an error processing your request."
        elif status == 429:
            default_type, default_message = "requests", "Rate limit reached."
        else:
            default_type, default_message = "invalid_request_error", "Invalid request."
        return _openai_error(
            status,
            script.error_message or default_message,
            type_=script.error_type or default_type,
            code=script.error_code,
        )

    @staticmethod
    def _tokens_for(script: Script, limit: Any) -> tuple[list[str], bool]:
        tokens = script.deltas()
        if isinstance(limit, int) and 0 < limit < len(tokens):
            return tokens[:limit], True
        return tokens, script.incomplete

    @staticmethod
    def _input_tokens(script: Script, body: dict[str, Any], key: str) -> int:
        if script.input_tokens is not None:
            return script.input_tokens
        return max(1, math.ceil(len(msgspec.json.encode(body.get(key) or "")) / 4))

    def _auto_file_results(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for tool in body.get("tools") or []:
            if isinstance(tool, dict) and tool.get("type") == "file_search":
                for vs_id in tool.get("vector_store_ids") or []:
                    store = self.vector_stores.get(vs_id)
                    for file_id, attributes in store.files.items() if store else []:
                        stored = self.files.get(file_id)
                        if stored is None:
                            continue
                        text = stored.content[:400].decode("utf-8", errors="replace")
                        results.append(
                            {
                                "file_id": file_id,
                                "filename": stored.filename,
                                "score": round(0.9 - 0.1 * len(results), 4),
                                "text": text,
                                "attributes": attributes,
                            }
                        )
        return results

    def _tool_scripts(self, script: Script, body: dict[str, Any]) -> list[ToolScript]:
        if script.tools:
            return list(script.tools)
        if self.auto_file_search and self._auto_file_results(body):
            return [FileSearchScript()]
        return []

    @staticmethod
    async def _pause(request: web.Request, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)
        transport = request.transport
        if transport is None or transport.is_closing():
            raise _ClientGone

    # --- generation: Responses API ---------------------------------------------------------------
    async def _responses(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        body = await self._read_json(request, record)
        if not isinstance(body, dict):
            return _openai_error(400, "Invalid body.", type_="invalid_request_error", code=None)
        script = self._next_script()
        if script.stall_before_headers:
            record.outcome = "stalled"
            await self._pause(request, script.stall_seconds)
        if script.status is not None:
            return self._error_response(script)
        model = body.get("model") or request.match_info.get("deployment") or "unknown"
        plan = _ResponsePlan(self, script, body, model)
        if not body.get("stream"):
            if script.stall_at is not None:
                await self._pause(request, script.stall_seconds)
            return _json(plan.final_response(plan.output_items(all_done=True)))
        return await self._stream_responses(request, record, script, plan)

    async def _stream_responses(
        self, request: web.Request, record: RecordedRequest, script: Script, plan: _ResponsePlan
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        seq = itertools.count()

        async def send(event: dict[str, Any]) -> None:
            event["sequence_number"] = next(seq)
            frame = b"event: " + event["type"].encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"
            await response.write(frame)
            record.events_sent += 1

        await send({"type": "response.created", "response": plan.snapshot("in_progress")})
        await send({"type": "response.in_progress", "response": plan.snapshot("in_progress")})
        for output_index, tool in enumerate(plan.tools):
            for event in plan.tool_events(output_index, tool):
                await send(event)
        message_index = len(plan.tools)
        await send(
            {
                "type": "response.output_item.added",
                "output_index": message_index,
                "item": {
                    "id": plan.message_id,
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            }
        )
        await send(
            {
                "type": "response.content_part.added",
                "item_id": plan.message_id,
                "output_index": message_index,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            }
        )
        if script.stall_at == 0:
            record.outcome = "stalled"
            await self._pause(request, script.stall_seconds)
        for count, token in enumerate(plan.tokens, start=1):
            await self._pause(request, (script.ttft_ms if count == 1 else script.token_gap_ms) / 1000)
            if script.stamp_tokens:
                token = _stamped(token)
            await send(
                {
                    "type": "response.output_text.delta",
                    "item_id": plan.message_id,
                    "output_index": message_index,
                    "content_index": 0,
                    "delta": token,
                    "logprobs": [],
                }
            )
            if script.fail_after == count:
                return await self._fail_stream(request, record, response, script, send, plan)
            if script.malformed_after == count:
                record.outcome = "malformed"
                await response.write(
                    b'event: response.output_text.delta\ndata: {"type": "response.output_te\n\n'
                )
                await response.write_eof()
                return response
            if script.stall_at == count:
                record.outcome = "stalled"
                await self._pause(request, script.stall_seconds)
        if script.refusal:
            await send(
                {
                    "type": "response.content_part.added",
                    "item_id": plan.message_id,
                    "output_index": message_index,
                    "content_index": 1,
                    "part": {"type": "refusal", "refusal": ""},
                }
            )
            for piece in script.refusal:
                await send(
                    {
                        "type": "response.refusal.delta",
                        "item_id": plan.message_id,
                        "output_index": message_index,
                        "content_index": 1,
                        "delta": piece,
                    }
                )
            await send(
                {
                    "type": "response.refusal.done",
                    "item_id": plan.message_id,
                    "output_index": message_index,
                    "content_index": 1,
                    "refusal": "".join(script.refusal),
                }
            )
        for index, annotation in enumerate(plan.annotations):
            await send(
                {
                    "type": "response.output_text.annotation.added",
                    "item_id": plan.message_id,
                    "output_index": message_index,
                    "content_index": 0,
                    "annotation_index": index,
                    "annotation": annotation,
                }
            )
        await send(
            {
                "type": "response.output_text.done",
                "item_id": plan.message_id,
                "output_index": message_index,
                "content_index": 0,
                "text": plan.text,
                "logprobs": [],
            }
        )
        await send(
            {
                "type": "response.content_part.done",
                "item_id": plan.message_id,
                "output_index": message_index,
                "content_index": 0,
                "part": plan.message_part(),
            }
        )
        await send(
            {"type": "response.output_item.done", "output_index": message_index, "item": plan.message_item()}
        )
        final = plan.final_response(plan.output_items(all_done=True))
        await send(
            {"type": "response.incomplete" if plan.incomplete else "response.completed", "response": final}
        )
        await response.write_eof()
        record.outcome = "incomplete" if plan.incomplete else "completed"
        return response

    async def _fail_stream(
        self,
        request: web.Request,
        record: RecordedRequest,
        response: web.StreamResponse,
        script: Script,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        plan: _ResponsePlan,
    ) -> web.StreamResponse:
        message = script.error_message or "The server had an error while processing your request."
        code = script.error_code or "server_error"
        if script.fail_mode == "drop":
            record.outcome = "dropped"
            if request.transport is not None:
                request.transport.abort()
            raise _ClientGone
        if script.fail_mode == "eof":
            record.outcome = "eof"
        elif script.fail_mode == "error_event":
            record.outcome = "error_event"
            await send({"type": "error", "code": code, "message": message, "param": None})
        else:
            record.outcome = "response_failed"
            failed = plan.final_response(plan.output_items(all_done=False), status="failed")
            failed["error"] = {"code": code, "message": message}
            await send({"type": "response.failed", "response": failed})
        await response.write_eof()
        return response

    # --- generation: Chat Completions ------------------------------------------------------------
    async def _chat(self, request: web.Request, record: RecordedRequest) -> web.StreamResponse:
        body = await self._read_json(request, record)
        if not isinstance(body, dict):
            return _openai_error(400, "Invalid body.", type_="invalid_request_error", code=None)
        script = self._next_script()
        if script.stall_before_headers:
            record.outcome = "stalled"
            await self._pause(request, script.stall_seconds)
        if script.status is not None:
            return self._error_response(script)
        model = body.get("model") or request.match_info.get("deployment") or "unknown"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        tokens, incomplete = self._tokens_for(script, limit)
        finish_reason = "length" if incomplete else "stop"
        completion_id = self._new_id("chatcmpl-")
        created = int(time.time())
        prompt_tokens = self._input_tokens(script, body, "messages")
        completion_tokens = script.output_tokens if script.output_tokens is not None else len(tokens)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": script.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": script.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        if not body.get("stream"):
            if script.stall_at is not None:
                await self._pause(request, script.stall_seconds)
            return _json(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": None,
                    "service_tier": "default",
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "".join(tokens),
                                "refusal": None,
                                "annotations": [],
                            },
                            "logprobs": None,
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": None if script.omit_usage else usage,
                }
            )
        options = body.get("stream_options")
        include_usage = (
            isinstance(options, dict) and bool(options.get("include_usage")) and not script.omit_usage
        )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            data: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "service_tier": "default",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                data["usage"] = None
            return data

        async def send(data: dict[str, Any] | str) -> None:
            payload = data.encode() if isinstance(data, str) else msgspec.json.encode(data)
            await response.write(b"data: " + payload + b"\n\n")
            record.events_sent += 1

        await send(chunk({"role": "assistant", "content": "", "refusal": None}))
        if script.stall_at == 0:
            record.outcome = "stalled"
            await self._pause(request, script.stall_seconds)
        for count, token in enumerate(tokens, start=1):
            await self._pause(request, (script.ttft_ms if count == 1 else script.token_gap_ms) / 1000)
            if script.stamp_tokens:
                token = _stamped(token)
            await send(chunk({"content": token}))
            if script.fail_after == count:
                if script.fail_mode == "drop":
                    record.outcome = "dropped"
                    if request.transport is not None:
                        request.transport.abort()
                    raise _ClientGone
                if script.fail_mode == "eof":
                    record.outcome = "eof"
                    await response.write_eof()
                    return response
                record.outcome = "error_event"
                await send(
                    {
                        "error": {
                            "message": script.error_message or "The server had an error.",
                            "type": script.error_type or "server_error",
                            "param": None,
                            "code": script.error_code,
                        }
                    }
                )
                await response.write_eof()
                return response
            if script.malformed_after == count:
                record.outcome = "malformed"
                await response.write(b'data: {"id": "chatcmpl-broken", "choices": [\n\n')
                await response.write_eof()
                return response
            if script.stall_at == count:
                record.outcome = "stalled"
                await self._pause(request, script.stall_seconds)
        for piece in script.refusal or []:
            await send(chunk({"refusal": piece}))
        await send(chunk({}, finish_reason))
        if include_usage:
            final = chunk({})
            final["choices"] = []
            final["usage"] = usage
            await send(final)
        await send("[DONE]")
        await response.write_eof()
        record.outcome = "incomplete" if incomplete else "completed"
        return response


class _ResponsePlan:
    """The items, text, annotations and usage of one scripted Responses API reply."""

    def __init__(self, fake: FakeOpenAI, script: Script, body: dict[str, Any], model: str) -> None:
        self.fake = fake
        self.script = script
        self.body = body
        self.model = model
        self.response_id = fake._new_id("resp_")
        self.message_id = fake._new_id("msg_")
        self.created_at = int(time.time())
        self.include = set(body.get("include") or [])
        self.tools = fake._tool_scripts(script, body)
        self.tool_ids = [
            fake._new_id(
                {FileSearchScript: "fs_", WebSearchScript: "ws_", CodeInterpreterScript: "ci_"}[type(t)]
            )
            for t in self.tools
        ]
        self.tokens, self.incomplete = fake._tokens_for(script, body.get("max_output_tokens"))
        self.annotations: list[dict[str, Any]] = []
        self.file_results: dict[int, list[dict[str, Any]]] = {}
        text = "".join(self.tokens)
        for index, tool in enumerate(self.tools):
            if isinstance(tool, FileSearchScript):
                results = tool.results if tool.results is not None else fake._auto_file_results(body)
                self.file_results[index] = results
                if tool.cite:
                    for result in results:
                        self.annotations.append(
                            {
                                "type": "file_citation",
                                "file_id": result["file_id"],
                                "filename": result.get("filename", ""),
                                "index": len(text),
                            }
                        )
            elif isinstance(tool, WebSearchScript) and not self.incomplete:
                for url, title in tool.sources:
                    phrase = f" ({title})"
                    self.tokens.append(phrase)
                    self.annotations.append(
                        {
                            "type": "url_citation",
                            "url": url,
                            "title": title,
                            "start_index": len(text) + 1,
                            "end_index": len(text) + len(phrase),
                        }
                    )
                    text += phrase
        self.text = text

    def snapshot(self, status: str) -> dict[str, Any]:
        return self.final_response([], status=status, usage=None)

    def tool_item(self, index: int, *, done: bool) -> dict[str, Any]:
        tool, item_id = self.tools[index], self.tool_ids[index]
        status = "completed" if done else "in_progress"
        if isinstance(tool, FileSearchScript):
            include_results = done and "file_search_call.results" in self.include
            return {
                "id": item_id,
                "type": "file_search_call",
                "status": status,
                "queries": tool.queries,
                "results": self.file_results.get(index, []) if include_results else None,
            }
        if isinstance(tool, WebSearchScript):
            return {
                "id": item_id,
                "type": "web_search_call",
                "status": status,
                "action": {"type": "search", "query": tool.query},
            }
        outputs = (
            [{"type": "logs", "logs": tool.output}]
            if done and "code_interpreter_call.outputs" in self.include
            else None
        )
        return {
            "id": item_id,
            "type": "code_interpreter_call",
            "status": status,
            "code": tool.code if done else "",
            "container_id": "cntr_fake",
            "outputs": outputs,
        }

    def tool_events(self, index: int, tool: ToolScript) -> list[dict[str, Any]]:
        item_id = self.tool_ids[index]
        base = {"item_id": item_id, "output_index": index}
        kind = {
            FileSearchScript: "file_search_call",
            WebSearchScript: "web_search_call",
            CodeInterpreterScript: "code_interpreter_call",
        }[type(tool)]
        events: list[dict[str, Any]] = [
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": self.tool_item(index, done=False),
            },
            {"type": f"response.{kind}.in_progress", **base},
        ]
        if isinstance(tool, CodeInterpreterScript):
            events += [
                {"type": "response.code_interpreter_call_code.delta", **base, "delta": tool.code},
                {"type": "response.code_interpreter_call_code.done", **base, "code": tool.code},
                {"type": "response.code_interpreter_call.interpreting", **base},
            ]
        else:
            events.append({"type": f"response.{kind}.searching", **base})
        events += [
            {"type": f"response.{kind}.completed", **base},
            {
                "type": "response.output_item.done",
                "output_index": index,
                "item": self.tool_item(index, done=True),
            },
        ]
        return events

    def message_part(self) -> dict[str, Any]:
        return {"type": "output_text", "text": self.text, "annotations": self.annotations, "logprobs": []}

    def message_item(self) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "status": "incomplete" if self.incomplete else "completed",
            "role": "assistant",
            "content": [self.message_part()],
        }

    def output_items(self, *, all_done: bool) -> list[dict[str, Any]]:
        items = [self.tool_item(i, done=True) for i in range(len(self.tools))]
        if all_done:
            items.append(self.message_item())
        return items

    def usage(self) -> dict[str, Any] | None:
        if self.script.omit_usage:
            return None
        input_tokens = self.fake._input_tokens(self.script, self.body, "input")
        output_tokens = (
            self.script.output_tokens if self.script.output_tokens is not None else len(self.tokens)
        )
        return {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": self.script.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.script.reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
        }

    def final_response(
        self, output: list[dict[str, Any]], *, status: str | None = None, usage: Any = "computed"
    ) -> dict[str, Any]:
        body = self.body
        status = status or ("incomplete" if self.incomplete else "completed")
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": self.usage() if usage == "computed" else usage,
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }


# --- standalone -----------------------------------------------------------------------------------
async def _serve(args: argparse.Namespace) -> None:
    tokens = [f"tok{i} " for i in range(args.tokens)] if args.tokens is not None else None
    script = Script(
        ttft_ms=args.ttft_ms, token_gap_ms=args.token_gap_ms, tokens=tokens, stamp_tokens=args.stamp_tokens
    )
    fake = FakeOpenAI(api_key=args.api_key or None, default_script=script, record_limit=args.record_limit)
    base_url = await fake.start(args.host, args.port)
    print(f"FAKE_OPENAI_URL={base_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fake OpenAI / Azure OpenAI server for benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (printed on start)")
    parser.add_argument("--ttft-ms", type=float, default=0.0, help="delay before the first text token")
    parser.add_argument("--token-gap-ms", type=float, default=0.0, help="delay between text tokens")
    parser.add_argument(
        "--tokens", type=int, default=None, help="tokens per reply (default: a short sentence)"
    )
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the accepted key; '' accepts any key")
    parser.add_argument("--record-limit", type=int, default=1000, help="requests kept for inspection")
    parser.add_argument(
        "--stamp-tokens", action="store_true", help="append `@<monotonic ns>` send times to text deltas"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
