"""The published OpenAPI 3.1 document, generated from the msgspec structs that encode the wire, and its route.

`OPERATIONS` is the one declarative table of the API: for every route under the URL prefix it names the
request struct, the success status and struct (or the SSE event structs), the query parameters and the
problem codes per error status. `build_document(prefix)` turns it into the document with
`msgspec.json.schema_components`, so a struct change shows up in the published schema at once; a test
fails when a route registered on the router is missing from the table (or the table names a route that
does not exist), so the document cannot drift from the router either.

Decisions:
- Paths are relative to the prefix, as in the original (`/v1/chats`), with `servers: [{url: <prefix>}]`.
  The root liveness routes (`/health`, `/healthz`) are outside the prefix and not part of this API.
- `GET {prefix}/v1/openapi.json` is authenticated like every other route under the prefix: one rule for
  the whole prefix, and gateways that front the API already pass credentials. The document is the same
  for every caller and is built once, at start-up.
- `security` describes the configured auth mode: a Bearer JWT (`jwt`, as the original), the gateway's
  headers (`trusted_headers`), or none (`dev`); the original's `bearerAuth` scheme is always defined.
- Schema names follow the original where a struct has a counterpart there (`Problem` is published as
  `ErrorResponse`, `SseDone` as `SseDoneEvent`, ...).
- Errors are `application/problem+json` (`ErrorResponse`, `code` required). Each operation lists the
  statuses it can answer with the codes behind each; the statuses every route shares (401, 500, 503, and
  400/413/415/422 for JSON bodies and UUID paths) are added from the operation's shape.
- SSE responses describe one event per the OpenAPI 3.1 reading of `text/event-stream` (an object with
  `event` and `data`, `data` being JSON per `contentSchema`), one variant per event name, so a validator
  can check every event of a stream.
"""

from __future__ import annotations

import http
import inspect
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
from aiohttp import web

from minichat_host import __version__
from minichat_host.api.admin import DeadLetterAction, DeadLetterPage, DeadLetterView, OutboxStatusPage
from minichat_host.api.problems import Problem
from minichat_host.config import AuthConfig
from minichat_host.domain import events
from minichat_host.domain.attachments import DOCUMENT_TYPES, IMAGE_TYPES, Attachment
from minichat_host.domain.turns import EditTurnRequest, SendMessageRequest, TurnStatus
from minichat_host.domain.wire import (
    ChatDetail,
    ChatsPage,
    CreateChatRequest,
    MessagesPage,
    Model,
    ModelList,
    QuotaStatusResponse,
    ReactionResponse,
    SetReactionRequest,
    UpdateChatTitleRequest,
)

HttpMethod = Literal["get", "post", "put", "patch", "delete"]
ListKind = Literal["chats", "messages"]

OPENAPI_PATH: Final = "/v1/openapi.json"
OPENAPI_VERSION: Final = "3.1.0"
JSON: Final = "application/json"
PROBLEM_JSON: Final = "application/problem+json"
EVENT_STREAM: Final = "text/event-stream"
SCHEMA_REF: Final = "#/components/schemas/{name}"

# Published schema names for structs whose class name differs from the original's schema name.
PUBLISHED_NAMES: Final[Mapping[str, str]] = {
    "Problem": "ErrorResponse",
    "SseStreamStarted": "SseStreamStartedEvent",
    "SsePing": "SsePingEvent",
    "SseDelta": "SseDeltaEvent",
    "SseTool": "SseToolEvent",
    "SseCitations": "SseCitationsEvent",
    "Citation": "CitationItem",
    "SseDone": "SseDoneEvent",
    "SseError": "SseErrorEvent",
}

# The payload struct of every SSE event name, in grammar order.
STREAM_EVENTS: Final[Mapping[events.SseEventName, type[msgspec.Struct]]] = {
    "stream_started": events.SseStreamStarted,
    "ping": events.SsePing,
    "delta": events.SseDelta,
    "tool": events.SseTool,
    "citations": events.SseCitations,
    "done": events.SseDone,
    "error": events.SseError,
}


@dataclass(frozen=True, slots=True)
class PathParameter:
    component: str
    description: str
    schema: Mapping[str, Any]


# Every `{name}` a path may hold; the document references them as `#/components/parameters/<component>`.
PATH_PARAMETERS: Final[Mapping[str, PathParameter]] = {
    "id": PathParameter("ChatId", "Chat UUID.", {"type": "string", "format": "uuid"}),
    "request_id": PathParameter(
        "RequestId", "Idempotency key (UUID) identifying a turn.", {"type": "string", "format": "uuid"}
    ),
    "msg_id": PathParameter("MessageId", "Message UUID.", {"type": "string", "format": "uuid"}),
    "attachment_id": PathParameter("AttachmentId", "Attachment UUID.", {"type": "string", "format": "uuid"}),
    "dead_letter_id": PathParameter(
        "DeadLetterId", "Outbox dead-letter id.", {"type": "string", "pattern": "^[0-9]{1,18}$"}
    ),
    "model_id": PathParameter(
        "ModelId",
        "Model identifier from the catalog; may contain dots and slashes (e.g. `gpt-4.1`).",
        {"type": "string", "minLength": 1},
    ),
}

_LIST_ORDER: Final[Mapping[ListKind, str]] = {"chats": "updated_at", "messages": "created_at"}
_LIST_ERRORS: Final = ("invalid_limit", "invalid_cursor", "invalid_orderby", "invalid_filter")


@dataclass(frozen=True, slots=True)
class Operation:
    """One route under the prefix, as the document describes it."""

    method: HttpMethod
    path: str  # relative to the prefix, `{name}` for path parameters
    operation_id: str
    tag: str
    summary: str
    description: str = ""
    status: int = 200  # the success status
    response: type[msgspec.Struct] | None = None  # JSON success body; None = no body (or the SSE stream)
    stream: bool = False  # the success response is the SSE stream of a turn
    request: type[msgspec.Struct] | None = None  # JSON request body
    request_required: bool = True
    request_example: Mapping[str, Any] | None = None
    upload: bool = False  # multipart/form-data with a `file` part
    listing: ListKind | None = None  # keyset pagination query parameters
    errors: Mapping[int, tuple[str, ...]] = field(default_factory=dict)  # status → problem codes
    response_headers: Mapping[str, str] = field(default_factory=dict)  # name → description
    free_form_response: bool = False  # the success body is a JSON object with no fixed schema
    text_response: str | None = None  # the success body is text of this media type (e.g. Prometheus)

    @property
    def path_parameters(self) -> tuple[str, ...]:
        return tuple(re.findall(r"\{([^}]+)\}", self.path))

    @property
    def has_json_body(self) -> bool:
        return self.request is not None


_CHAT_404: Final = {404: ("chat_not_found",)}
_TURN_SETUP_ERRORS: Final[Mapping[int, tuple[str, ...]]] = {
    400: ("invalid_model", "invalid_attachment", "too_many_images", "web_search_disabled", "images_disabled"),
    404: ("chat_not_found",),
    409: ("request_id_conflict", "turn_already_running", "generation_in_progress"),
    415: ("unsupported_media",),
    422: ("input_too_long", "context_budget_exceeded"),
    429: ("quota_exceeded",),
    500: ("replay_unavailable",),
    502: ("provider_error",),
}
_MUTATION_ERRORS: Final[Mapping[int, tuple[str, ...]]] = {
    **_TURN_SETUP_ERRORS,
    400: ("invalid_turn_state", *_TURN_SETUP_ERRORS[400]),
    403: ("forbidden",),
    404: ("chat_not_found", "turn_not_found"),
    409: ("not_latest_turn", "generation_in_progress", "turn_already_running"),
}
_STREAM_DESCRIPTION: Final = (
    "Failures found before the stream opens are answered as problem+json with the statuses below and no "
    "stream. Otherwise the answer is 200 `text/event-stream`; the grammar is `stream_started ping* "
    "(delta|tool)* citations? (done|error)`, exactly one terminal event, after which the server closes the "
    "stream. A failure after `stream_started` is the terminal `error` event (HTTP status stays 200). The "
    "assistant message, the turn state and the quota settlement are committed before `done` or `error` is "
    "written. A client that disconnects cancels the turn (`cancelled`, partial text kept)."
)


def _list_description(kind: ListKind) -> str:
    order = _LIST_ORDER[kind]
    default = "desc" if kind == "chats" else "asc"
    return (
        f"Keyset pages, default order `{order} {default}` (`id` breaks ties). `limit` (default 20, values "
        f"above 100 are clamped to 100), `cursor` (opaque; carries its order) and `$orderby` (`{order} "
        f"asc|desc`, optionally followed by `id` in the same direction). `$filter` is not supported: any "
        f"value is answered 422 `invalid_filter`."
    )


OPERATIONS: Final[tuple[Operation, ...]] = (
    # --- chats ---------------------------------------------------------------------------------------
    Operation(
        "post",
        "/v1/chats",
        "createChat",
        "chats",
        "Create a new chat",
        "The optional `model` selects a catalog model (default: the catalog's default model); it is fixed "
        "for the chat's life. `title`, when present, is trimmed and must be 1..255 characters. An empty "
        "body is read as `{}`. Answers 201 with `Location` set to the new chat's URL.",
        status=201,
        response=ChatDetail,
        request=CreateChatRequest,
        request_required=False,
        request_example={"title": "Q3 Financial Analysis"},
        errors={400: ("validation_error", "invalid_model")},
        response_headers={"Location": "URL of the created chat."},
    ),
    Operation(
        "get",
        "/v1/chats",
        "listChats",
        "chats",
        "List the caller's chats, newest first",
        _list_description("chats"),
        response=ChatsPage,
        listing="chats",
    ),
    Operation(
        "get",
        "/v1/chats/{id}",
        "getChat",
        "chats",
        "Get chat metadata",
        "Chat metadata with the number of visible messages (messages are listed separately).",
        response=ChatDetail,
        errors=_CHAT_404,
    ),
    Operation(
        "patch",
        "/v1/chats/{id}",
        "updateChatTitle",
        "chats",
        "Rename a chat",
        "The title is trimmed and must be 1..255 characters; sets `updated_at`.",
        response=ChatDetail,
        request=UpdateChatTitleRequest,
        request_example={"title": "Renamed Chat"},
        errors={400: ("validation_error",), **_CHAT_404},
    ),
    Operation(
        "delete",
        "/v1/chats/{id}",
        "deleteChat",
        "chats",
        "Delete a chat",
        "Soft-deletes the chat; provider files and the vector store are cleaned up through the outbox.",
        status=204,
        errors=_CHAT_404,
    ),
    # --- messages ------------------------------------------------------------------------------------
    Operation(
        "get",
        "/v1/chats/{id}/messages",
        "listMessages",
        "messages",
        "List a chat's messages, oldest first",
        _list_description("messages"),
        response=MessagesPage,
        listing="messages",
        errors=_CHAT_404,
    ),
    Operation(
        "post",
        "/v1/chats/{id}/messages:stream",
        "sendMessage",
        "messages",
        "Send a message and stream the answer (SSE)",
        "`request_id` is the idempotency key (the server makes one when it is absent): a completed turn "
        "with the same id is replayed without side effects; a running, failed or cancelled one is 409, "
        "and so is any other running turn in the chat. " + _STREAM_DESCRIPTION,
        stream=True,
        request=SendMessageRequest,
        request_example={"content": "What does the document say about Q3 revenue?"},
        errors={**_TURN_SETUP_ERRORS, 400: ("invalid_request", *_TURN_SETUP_ERRORS[400])},
    ),
    # --- attachments ---------------------------------------------------------------------------------
    Operation(
        "post",
        "/v1/chats/{id}/attachments",
        "uploadAttachment",
        "attachments",
        "Upload a document or image",
        "`multipart/form-data` with the file in the part named `file` (other parts are ignored); the "
        "part's Content-Type is required (`application/octet-stream` is resolved from the file name's "
        "extension, `text/csv` is stored as `text/plain`). Allowed document types: "
        + ", ".join(f"`{t}`" for t in sorted(DOCUMENT_TYPES))
        + "; images: "
        + ", ".join(f"`{t}`" for t in sorted(IMAGE_TYPES))
        + ". The attachment is `ready` when the 201 is returned by the local storage backend.",
        status=201,
        response=Attachment,
        upload=True,
        errors={
            400: (
                "invalid_upload",
                "document_limit_exceeded",
                "storage_limit_exceeded",
                "code_interpreter_not_supported",
                "invalid_model",
            ),
            404: ("chat_not_found",),
            413: ("file_too_large",),
            415: ("unsupported_file_type",),
            502: ("provider_error",),
            503: ("upload_concurrency_limit",),
        },
    ),
    Operation(
        "get",
        "/v1/chats/{id}/attachments/{attachment_id}",
        "getAttachment",
        "attachments",
        "Get attachment status and metadata",
        response=Attachment,
        errors={404: ("chat_not_found", "attachment_not_found")},
    ),
    Operation(
        "delete",
        "/v1/chats/{id}/attachments/{attachment_id}",
        "deleteAttachment",
        "attachments",
        "Delete an attachment",
        "204 also when it is already deleted; 409 `attachment_locked` when any message references it.",
        status=204,
        errors={
            403: ("forbidden",),
            404: ("chat_not_found", "attachment_not_found"),
            409: ("attachment_locked",),
        },
    ),
    # --- turns ---------------------------------------------------------------------------------------
    Operation(
        "get",
        "/v1/chats/{id}/turns/{request_id}",
        "getTurnStatus",
        "turns",
        "Get the authoritative state of a turn",
        response=TurnStatus,
        errors={403: ("forbidden",), 404: ("chat_not_found", "turn_not_found")},
    ),
    Operation(
        "patch",
        "/v1/chats/{id}/turns/{request_id}",
        "editTurn",
        "turns",
        "Edit the latest turn's message and stream a new answer (SSE)",
        "Only the caller's latest, terminal turn. The new turn gets a server-made request_id, announced "
        "in `stream_started`. " + _STREAM_DESCRIPTION,
        stream=True,
        request=EditTurnRequest,
        request_example={"content": "What about Q3 profit margins?"},
        errors={**_MUTATION_ERRORS, 400: ("invalid_request", *_MUTATION_ERRORS[400])},
    ),
    Operation(
        "delete",
        "/v1/chats/{id}/turns/{request_id}",
        "deleteTurn",
        "turns",
        "Delete the latest turn",
        "Soft-deletes the caller's latest, terminal turn and its messages.",
        status=204,
        errors={
            400: ("invalid_turn_state",),
            403: ("forbidden",),
            404: ("chat_not_found", "turn_not_found"),
            409: ("not_latest_turn", "generation_in_progress"),
        },
    ),
    Operation(
        "post",
        "/v1/chats/{id}/turns/{request_id}/retry",
        "retryTurn",
        "turns",
        "Regenerate the latest turn's answer (SSE)",
        "No request body. Only the caller's latest, terminal turn; the new turn gets a server-made "
        "request_id, announced in `stream_started`. " + _STREAM_DESCRIPTION,
        stream=True,
        errors=_MUTATION_ERRORS,
    ),
    # --- reactions -----------------------------------------------------------------------------------
    Operation(
        "put",
        "/v1/chats/{id}/messages/{msg_id}/reaction",
        "setReaction",
        "reactions",
        "Set like/dislike on an assistant message",
        "`reaction` is `like` or `dislike` (anything else is 400 `validation_error`).",
        response=ReactionResponse,
        request=SetReactionRequest,
        request_example={"reaction": "like"},
        errors={
            400: ("validation_error", "invalid_reaction_target"),
            404: ("chat_not_found", "message_not_found"),
        },
    ),
    Operation(
        "delete",
        "/v1/chats/{id}/messages/{msg_id}/reaction",
        "removeReaction",
        "reactions",
        "Remove the caller's reaction",
        "204 even when there was none (the chat and message must exist).",
        status=204,
        errors={404: ("chat_not_found", "message_not_found")},
    ),
    # --- models, quota -------------------------------------------------------------------------------
    Operation(
        "get",
        "/v1/models",
        "listModels",
        "models",
        "List the enabled models, in catalog order",
        response=ModelList,
    ),
    Operation(
        "get",
        "/v1/models/{model_id}",
        "getModel",
        "models",
        "Get one enabled model",
        response=Model,
        errors={404: ("model_not_found",)},
    ),
    Operation(
        "get",
        "/v1/quota/status",
        "getQuotaStatus",
        "quota",
        "Get the caller's quota status per tier and period",
        response=QuotaStatusResponse,
    ),
    # --- operations (extensions: admin role for the outbox) --------------------------------------------
    Operation(
        "get",
        "/v1/admin/outbox/status",
        "getOutboxStatus",
        "admin",
        "Outbox status per queue and partition",
        "Backlog, processed sequence, lease holder, attempts, last error, oldest pending age. Admin role.",
        response=OutboxStatusPage,
        errors={403: ("forbidden",)},
    ),
    Operation(
        "get",
        "/v1/admin/outbox/dead-letters",
        "listDeadLetters",
        "admin",
        "List outbox dead letters (newest failures first)",
        "Query: `queue`, `status` (pending|reprocessing|resolved|discarded|all), `limit` 1..1000.",
        response=DeadLetterPage,
        errors={400: ("invalid_status", "invalid_limit"), 403: ("forbidden",)},
    ),
    Operation(
        "get",
        "/v1/admin/outbox/dead-letters/{dead_letter_id}",
        "getDeadLetter",
        "admin",
        "Inspect one dead letter, payload included",
        response=DeadLetterView,
        errors={400: ("invalid_id",), 403: ("forbidden",), 404: ("dead_letter_not_found",)},
    ),
    Operation(
        "post",
        "/v1/admin/outbox/dead-letters/{dead_letter_id}/replay",
        "replayDeadLetter",
        "admin",
        "Replay a pending dead letter at the end of its partition",
        response=DeadLetterAction,
        errors={
            400: ("invalid_id",),
            403: ("forbidden",),
            404: ("dead_letter_not_found",),
            409: ("dead_letter_not_pending",),
        },
    ),
    Operation(
        "post",
        "/v1/admin/outbox/dead-letters/{dead_letter_id}/discard",
        "discardDeadLetter",
        "admin",
        "Discard a pending dead letter",
        response=DeadLetterAction,
        errors={
            400: ("invalid_id",),
            403: ("forbidden",),
            404: ("dead_letter_not_found",),
            409: ("dead_letter_not_pending",),
        },
    ),
    Operation(
        "get",
        "/metrics",
        "getMetrics",
        "admin",
        "Prometheus metrics (outbox queues, clean-up, summaries)",
        text_response="text/plain",
    ),
    # --- this document -------------------------------------------------------------------------------
    Operation(
        "get",
        OPENAPI_PATH,
        "getOpenApiDocument",
        "meta",
        "This OpenAPI document",
        "Generated at start-up from the structs that encode the responses.",
        free_form_response=True,
    ),
)

TAGS: Final[tuple[tuple[str, str], ...]] = (
    ("chats", "Chat lifecycle: create, list, get, update title, delete."),
    ("messages", "Send messages and receive streamed AI responses (SSE)."),
    ("attachments", "Upload documents and images to a chat."),
    ("turns", "Turn status query and tail-only mutations (retry, edit, delete)."),
    ("reactions", "Binary like/dislike reactions on assistant messages."),
    ("models", "Read-only model catalog visible to the authenticated user."),
    ("quota", "Per-user quota status queries."),
    ("meta", "Description of this API."),
    ("admin", "Operations: outbox status, dead letters and metrics."),
)

_INFO_DESCRIPTION: Final = (
    "Multi-tenant AI chat service (a re-creation of the original mini-chat module). Every route requires "
    "the caller's identity as configured by the deployer: a Bearer JWT (`auth.mode: jwt`), gateway "
    "headers with a shared secret (`trusted_headers`), or none at all on a loopback-only dev server "
    "(`dev`). Another tenant's or user's resource is 404. Every error body is `application/problem+json` "
    "with `type`, `title`, `status`, `detail` and a machine `code`. Null optional members are omitted."
)


# --- schema generation ----------------------------------------------------------------------------------
def _published(name: str) -> str:
    return PUBLISHED_NAMES.get(name, name)


def _ref(struct: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": SCHEMA_REF.format(name=_published(struct.__name__))}


def _rename_refs(node: Any) -> Any:
    """A copy of a schema tree with `$ref`s pointing at the published component names."""
    if isinstance(node, dict):
        renamed = {key: _rename_refs(value) for key, value in node.items()}
        ref = renamed.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            renamed["$ref"] = SCHEMA_REF.format(name=_published(ref.rsplit("/", 1)[1]))
        return renamed
    if isinstance(node, list):
        return [_rename_refs(item) for item in node]
    return node


def _is_datetime(t: msgspec.inspect.Type) -> bool:
    if isinstance(t, msgspec.inspect.Metadata):
        return _is_datetime(t.type)
    if isinstance(t, msgspec.inspect.UnionType):
        return any(_is_datetime(member) for member in t.types)
    return isinstance(t, msgspec.inspect.DateTimeType)


def _struct_types(types: Iterable[Any]) -> Iterator[msgspec.inspect.StructType]:
    """Every struct type reachable from `types`, once."""
    seen: set[type] = set()
    stack: list[msgspec.inspect.Type] = list(msgspec.inspect.multi_type_info(list(types)))
    while stack:
        t = stack.pop()
        if isinstance(t, msgspec.inspect.StructType):
            if t.cls in seen:
                continue
            seen.add(t.cls)
            yield t
            stack.extend(f.type for f in t.fields)
        elif isinstance(t, msgspec.inspect.Metadata):
            stack.append(t.type)
        elif isinstance(t, msgspec.inspect.UnionType):
            stack.extend(t.types)
        elif isinstance(
            t, (msgspec.inspect.ListType, msgspec.inspect.SetType, msgspec.inspect.FrozenSetType)
        ):
            stack.append(t.item_type)
        elif isinstance(t, msgspec.inspect.DictType):
            stack.append(t.value_type)


def _add_datetime_formats(components: dict[str, Any], types: Iterable[Any]) -> None:
    """msgspec marks datetimes `format: date-time` only for `tz=True` annotations; the wire structs hold
    aware UTC datetimes (encoded RFC 3339), so every datetime member gets the format."""
    for struct in _struct_types(types):
        schema = components.get(_published(struct.cls.__name__))
        if schema is None:
            continue
        for member in struct.fields:
            if not _is_datetime(member.type):
                continue
            prop = schema["properties"][member.encode_name]
            for branch in prop.get("anyOf", [prop]):
                if branch.get("type") == "string":
                    branch["format"] = "date-time"


def _require_always_encoded(
    components: dict[str, Any], responses: Iterable[Any], requests: Iterable[Any]
) -> None:
    """A struct without `omit_defaults` encodes its defaulted members too; msgspec lists only members without
    a default as required (the decoding view), so response-only structs get every member required."""
    request_structs = {t.cls for t in _struct_types(requests)}
    for struct in _struct_types(responses):
        if struct.cls in request_structs or struct.cls.__struct_config__.omit_defaults:
            continue
        schema = components[_published(struct.cls.__name__)]
        schema["required"] = [member.encode_name for member in struct.fields]


def _schema_components(responses: list[Any], requests: list[Any]) -> dict[str, Any]:
    """The components of all structs under their published names, with cleaned descriptions."""
    types = [*responses, *requests]
    _, raw = msgspec.json.schema_components(types, ref_template=SCHEMA_REF)
    qualified = sorted(name for name in raw if "." in name)
    if qualified:
        # msgspec qualifies names only when two structs share a class name: the document needs one name each.
        raise RuntimeError(f"two wire structs share a class name: {', '.join(qualified)}")
    components: dict[str, Any] = {}
    for name, schema in raw.items():
        published = _published(name)
        schema = _rename_refs(schema)
        schema["title"] = published
        if "description" in schema:
            schema["description"] = inspect.cleandoc(schema["description"])
        components[published] = schema
    _add_datetime_formats(components, types)
    _require_always_encoded(components, responses, requests)
    return dict(sorted(components.items()))


def _problem_response(status: int, codes: Iterable[str]) -> dict[str, Any]:
    phrase = http.HTTPStatus(status).phrase
    listed = ", ".join(f"`{code}`" for code in sorted(set(codes)))
    return {
        "description": f"{phrase}. Problem codes: {listed}." if listed else f"{phrase}.",
        "content": {PROBLEM_JSON: {"schema": _ref(Problem)}},
    }


def _error_codes(op: Operation) -> dict[int, list[str]]:
    """The op's own problem codes plus those every route of its shape can answer."""
    codes: dict[int, list[str]] = {status: list(found) for status, found in op.errors.items()}

    def add(status: int, *found: str) -> None:
        codes.setdefault(status, []).extend(found)

    add(401, "unauthorized")
    add(500, "internal_error")
    add(503, "service_unavailable")
    if any(PATH_PARAMETERS[name].schema.get("format") == "uuid" for name in op.path_parameters):
        add(400, "invalid_uuid")
    if op.has_json_body:
        add(400, "invalid_json")
        add(413, "payload_too_large")
        add(415, "unsupported_media_type")
        add(422, "validation_error")
    if op.upload:
        add(400, "invalid_upload")
        add(413, "payload_too_large")
    if op.listing is not None:
        add(422, *_LIST_ERRORS)
    return dict(sorted(codes.items()))


def _event_schema() -> dict[str, Any]:
    variants = [
        {
            "title": f"{name} event",
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": name},
                "data": {"type": "string", "contentMediaType": JSON, "contentSchema": _ref(struct)},
            },
        }
        for name, struct in STREAM_EVENTS.items()
    ]
    return {
        "description": (
            "One Server-Sent Event: `event: <name>` and one `data:` line of compact JSON (the payload "
            "schema of each event name is its `contentSchema`). `: ping` comment lines may appear as a "
            "keep-alive. Grammar: `stream_started ping* (delta|tool)* citations? (done|error)`."
        ),
        "oneOf": variants,
    }


def _success_response(op: Operation) -> dict[str, Any]:
    response: dict[str, Any] = {"description": http.HTTPStatus(op.status).phrase + "."}
    if op.stream:
        response["description"] = "The SSE stream of the turn."
        response["content"] = {EVENT_STREAM: {"schema": _event_schema()}}
        response["headers"] = {"Cache-Control": {"schema": {"type": "string", "const": "no-cache"}}}
    elif op.response is not None:
        response["content"] = {JSON: {"schema": _ref(op.response)}}
    elif op.free_form_response:
        response["content"] = {JSON: {"schema": {"type": "object"}}}
    elif op.text_response is not None:
        response["content"] = {op.text_response: {"schema": {"type": "string"}}}
    if op.response_headers:
        headers = response.setdefault("headers", {})
        for name, description in op.response_headers.items():
            headers[name] = {"description": description, "schema": {"type": "string"}}
    return response


def _list_parameters() -> list[dict[str, Any]]:
    refs = ["PaginationLimit", "PaginationCursor", "ODataOrderBy", "ODataFilter"]
    return [{"$ref": f"#/components/parameters/{name}"} for name in refs]


def _component_parameters() -> dict[str, Any]:
    parameters: dict[str, Any] = {
        spec.component: {
            "name": name,
            "in": "path",
            "required": True,
            "description": spec.description,
            "schema": dict(spec.schema),
        }
        for name, spec in PATH_PARAMETERS.items()
    }
    parameters["PaginationLimit"] = {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "Page size; values above 100 are clamped to 100.",
        "schema": {"type": "integer", "minimum": 1, "default": 20},
    }
    parameters["PaginationCursor"] = {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "Opaque cursor from `page_info` (`next_cursor` / `prev_cursor`); empty = first page.",
        "schema": {"type": "string"},
    }
    parameters["ODataOrderBy"] = {
        "name": "$orderby",
        "in": "query",
        "required": False,
        "description": "The sort key `asc|desc`, optionally followed by `id` in the same direction.",
        "schema": {"type": "string"},
    }
    parameters["ODataFilter"] = {
        "name": "$filter",
        "in": "query",
        "required": False,
        "description": "Not supported by this implementation: any value is answered 422 `invalid_filter`.",
        "schema": {"type": "string"},
    }
    return parameters


def _operation_object(op: Operation) -> dict[str, Any]:
    document: dict[str, Any] = {
        "operationId": op.operation_id,
        "tags": [op.tag],
        "summary": op.summary,
    }
    if op.description:
        document["description"] = op.description
    if op.listing is not None:
        document["parameters"] = _list_parameters()
    if op.request is not None:
        document["requestBody"] = {
            "required": op.request_required,
            "content": {JSON: {"schema": _ref(op.request)}},
        }
        if op.request_example is not None:
            document["requestBody"]["content"][JSON]["example"] = dict(op.request_example)
    elif op.upload:
        document["requestBody"] = {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "contentMediaType": "application/octet-stream",
                                "description": "The file; its part needs a Content-Type and may carry a "
                                "filename (default `upload`, cut to 255 characters).",
                            }
                        },
                    },
                    "encoding": {"file": {"contentType": "text/plain"}},
                }
            },
        }
    responses: dict[str, Any] = {str(op.status): _success_response(op)}
    for status, codes in _error_codes(op).items():
        responses[str(status)] = _problem_response(status, codes)
    document["responses"] = dict(sorted(responses.items()))
    return document


def response_types() -> list[type[msgspec.Struct]]:
    """Every struct the table encodes: success bodies, the problem and the SSE payloads."""
    found: list[type[msgspec.Struct]] = [Problem, *STREAM_EVENTS.values()]
    found.extend(op.response for op in OPERATIONS if op.response is not None and op.response not in found)
    return found


def request_types() -> list[type[msgspec.Struct]]:
    """Every struct the table decodes from a request body."""
    return list(dict.fromkeys(op.request for op in OPERATIONS if op.request is not None))


def _security(auth: AuthConfig) -> tuple[dict[str, Any], list[dict[str, list[str]]]]:
    """Security schemes and the requirement of the configured auth mode."""
    schemes: dict[str, Any] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT with the tenant and user claims (`auth.mode: jwt`).",
        }
    }
    if auth.mode == "jwt":
        return schemes, [{"bearerAuth": []}]
    if auth.mode == "trusted_headers":
        headers = auth.trusted_headers
        for name, header, description in (
            ("gatewaySecret", headers.secret_header, "The secret shared with the gateway."),
            ("tenantHeader", headers.tenant_header, "The caller's tenant id (UUID), set by the gateway."),
            ("userHeader", headers.user_header, "The caller's user id (UUID), set by the gateway."),
        ):
            schemes[name] = {"type": "apiKey", "in": "header", "name": header, "description": description}
        return schemes, [{"gatewaySecret": [], "tenantHeader": [], "userHeader": []}]
    # `dev`: every request is the configured dev identity, no credentials at all.
    return schemes, []


def build_document(prefix: str, auth: AuthConfig | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every operation in `OPERATIONS`, served under `prefix`, for the given auth
    config (default: `jwt`, the original's Bearer tokens)."""
    schemes, security = _security(auth if auth is not None else AuthConfig(mode="jwt"))
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        item = paths.setdefault(op.path, {})
        if op.method in item:
            raise RuntimeError(f"{op.method.upper()} {op.path} is listed twice in OPERATIONS")
        if op.path_parameters and "parameters" not in item:
            item["parameters"] = [
                {"$ref": f"#/components/parameters/{PATH_PARAMETERS[name].component}"}
                for name in op.path_parameters
            ]
        item[op.method] = _operation_object(op)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "minichat API", "version": __version__, "description": _INFO_DESCRIPTION},
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "servers": [{"url": prefix.rstrip("/") or "/"}],
        "security": security,
        "tags": [{"name": name, "description": description} for name, description in TAGS],
        "paths": paths,
        "components": {
            "securitySchemes": schemes,
            "parameters": _component_parameters(),
            "schemas": _schema_components(response_types(), request_types()),
        },
    }


# --- the route ------------------------------------------------------------------------------------------
OPENAPI_DOCUMENT_KEY: Final = web.AppKey("openapi_document", bytes)


async def get_openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_DOCUMENT_KEY], content_type=JSON)


def register(app: web.Application, prefix: str) -> None:
    """Serve the document at `{prefix}/v1/openapi.json`; it is built once, when the app starts."""

    async def build(app: web.Application) -> None:
        # Imported here: app.py is the composition root and imports this module.
        from minichat_host.app import CONFIG_KEY

        app[OPENAPI_DOCUMENT_KEY] = msgspec.json.encode(build_document(prefix, app[CONFIG_KEY].auth))

    app.on_startup.append(build)
    app.router.add_get(f"{prefix}{OPENAPI_PATH}", get_openapi_document)


__all__ = [
    "OPENAPI_DOCUMENT_KEY",
    "OPENAPI_PATH",
    "OPERATIONS",
    "PATH_PARAMETERS",
    "STREAM_EVENTS",
    "Operation",
    "build_document",
    "register",
]
