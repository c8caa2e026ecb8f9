"""RFC 9457 problem+json: every error the host answers, framework errors included, carries a `code`."""

from __future__ import annotations

import itertools
import logging
import os
import uuid
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from minichat_host.db.engine import is_unavailable_error
from minichat_host.domain.errors import DomainError

log = logging.getLogger("minichat.api")

PROBLEM_CONTENT_TYPE = "application/problem+json"
T = TypeVar("T")


class ValidationViolation(msgspec.Struct, omit_defaults=True):
    field: str
    message: str
    code: str | None = None


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    code: str
    trace_id: str | None = None
    errors: list[ValidationViolation] | None = None
    quota_scope: str | None = None


class ProblemError(Exception):
    """Raised by handlers to answer with a problem; nothing after it runs."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: list[ValidationViolation] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}


# Codes for errors aiohttp raises itself (unknown route, wrong method, body too large...).
_FRAMEWORK_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "service_unavailable",
}

_encoder = msgspec.json.Encoder()


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    title: str | None = None,
    errors: list[ValidationViolation] | None = None,
    headers: dict[str, str] | None = None,
    trace_id: str | None = None,
    quota_scope: str | None = None,
) -> web.Response:
    body = Problem(
        type="about:blank",
        title=title or code,
        status=status,
        detail=detail,
        code=code,
        trace_id=trace_id,
        errors=errors,
        quota_scope=quota_scope,
    )
    return web.Response(
        status=status,
        body=_encoder.encode(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


REQUEST_ID_KEY = web.RequestKey("minichat.request_id", str)


def _trace_id(request: web.Request) -> str | None:
    value = request.get(REQUEST_ID_KEY)
    return value if isinstance(value, str) else None


def problem_for_exception(request: web.Request, exc: Exception) -> web.Response | None:
    """The problem+json answer for an exception a handler raised; None when it must propagate (a redirect,
    a client that went away)."""
    trace_id = _trace_id(request)
    if isinstance(exc, ProblemError):
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            title=exc.title,
            errors=exc.errors,
            headers=exc.headers,
            trace_id=trace_id,
            quota_scope=exc.extra.get("quota_scope"),
        )
    if isinstance(exc, DomainError):
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            title=exc.title,
            trace_id=trace_id,
            quota_scope=(exc.extra or {}).get("quota_scope"),
        )
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        code = _FRAMEWORK_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return problem_response(
            exc.status, code, detail, title=exc.reason, headers=headers, trace_id=trace_id
        )
    if isinstance(exc, ConnectionResetError):
        return None
    if is_unavailable_error(exc):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return problem_response(
            503,
            "service_unavailable",
            "The database is unavailable; try again shortly.",
            headers={"Retry-After": "1"},
            trace_id=trace_id,
        )
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem_response(
        500, "internal_error", "An internal error occurred.", title="Internal Error", trace_id=trace_id
    )


# A generated request id only has to be unique, not unpredictable: a random half per process and a counter,
# 32 hex digits like a UUID's (uuid4 costs a getrandom call on every request).
_REQUEST_ID_PREFIX = os.urandom(8).hex()
_request_numbers = itertools.count()


def assign_request_id(request: web.Request) -> str:
    """The request's id: the client's `X-Request-Id` when it is a short printable token, else a new one."""
    incoming = request.headers.get("X-Request-Id", "")
    # Echoed into a header and the logs: only a short printable ASCII token is kept.
    usable = 0 < len(incoming) <= 128 and incoming.isascii() and incoming.isprintable()
    request_id = incoming if usable else f"{_REQUEST_ID_PREFIX}{next(_request_numbers) % 2**64:016x}"
    request[REQUEST_ID_KEY] = request_id
    return request_id


# --- request parsing helpers -----------------------------------------------------------------------
def _is_json_content_type(request: web.Request) -> bool:
    # Parsed here rather than through `request.content_type`, which caches the parsed header on the
    # request: ~0.9 KiB for as long as a streaming request lives (bench/memory.py).
    ctype = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


async def read_json(request: web.Request, struct: type[T], *, allow_empty: bool = False) -> T:
    """Decode the request body into `struct`: 415 wrong content type, 400 bad JSON, 422 wrong shape."""
    raw = await request.read()
    if not raw and allow_empty:
        raw = b"{}"
    elif not _is_json_content_type(request):
        raise ProblemError(415, "unsupported_media_type", "Expected Content-Type: application/json")
    try:
        data = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec raises UnicodeDecodeError (not DecodeError) for invalid UTF-8 inside a JSON string.
        raise ProblemError(400, "invalid_json", f"Malformed JSON body: {exc}") from None
    except RecursionError:
        # msgspec stops at the interpreter's recursion limit on deeply nested arrays/objects.
        raise ProblemError(400, "invalid_json", "Malformed JSON body: nested too deeply") from None
    try:
        return msgspec.convert(data, struct)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in message else "$"
        raise ProblemError(
            422,
            "validation_error",
            message,
            title="Validation Error",
            errors=[ValidationViolation(field=field, message=message.split(" - at ")[0])],
        ) from None


def path_uuid(request: web.Request, name: str) -> uuid.UUID:
    """A UUID path parameter, or 400 `invalid_uuid`."""
    raw = request.match_info.get(name, "")
    try:
        # The canonical form through msgspec (0.4 µs against `UUID()`'s 1.1); the other spellings `UUID()`
        # accepts (braces, a `urn:uuid:` prefix, hyphens elsewhere or none) still parse below.
        return msgspec.convert(raw, uuid.UUID)
    except msgspec.ValidationError:
        pass
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ProblemError(400, "invalid_uuid", f"Path parameter '{name}' is not a valid UUID") from None


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_encoder.encode(data), content_type="application/json", headers=headers
    )
