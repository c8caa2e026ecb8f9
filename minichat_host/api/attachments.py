"""`/v1/chats/{id}/attachments`: multipart upload (201), metadata (200) and delete (204).

The HTTP side only finds the `file` part of the multipart body; the domain reads the part itself (in
chunks, counting bytes) so the body is never held in memory. The service lives on the application under
`ATTACHMENT_SERVICE_KEY` (app.py builds it).
"""

from __future__ import annotations

from typing import Final

from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from minichat_host.api.problems import ProblemError, json_response, path_uuid
from minichat_host.auth import identity
from minichat_host.domain.attachments import (
    RETRY_AFTER_SECONDS,
    AttachmentService,
    FileTooLarge,
    IncomingFile,
    InvalidUpload,
    UploadConcurrencyLimit,
)

ATTACHMENT_SERVICE_KEY: Final = web.AppKey("attachment_service", AttachmentService)
FILE_PART: Final = "file"
# Bytes of other (ignored) parts read while looking for the file part.
MAX_IGNORED_PART_BYTES: Final = 1024 * 1024
# Parts skipped before the file part: each costs parsing work even when empty (a multipart bomb).
MAX_IGNORED_PARTS: Final = 100


def attachment_service(request: web.Request) -> AttachmentService:
    return request.app[ATTACHMENT_SERVICE_KEY]


async def _file_part(request: web.Request) -> IncomingFile:
    """The first part named `file`; other parts are skipped. 400 for a body that is not multipart with a
    boundary, or that has no file part."""
    if request.content_type != "multipart/form-data":
        raise InvalidUpload("Expected a multipart/form-data body with a 'file' part.")
    try:
        reader = MultipartReader(request.headers, request.content)
    except (KeyError, ValueError):
        raise InvalidUpload("The multipart/form-data Content-Type has no valid boundary.") from None
    ignored = 0
    for _ in range(MAX_IGNORED_PARTS + 1):
        try:
            part = await reader.next()
        except (ValueError, RuntimeError, AssertionError, HttpProcessingError) as exc:
            # HttpProcessingError: a part header aiohttp refuses (e.g. a NUL byte in it).
            raise InvalidUpload(f"Malformed multipart body: {exc}") from None
        if part is None:
            raise InvalidUpload("The multipart body has no 'file' part.")
        if isinstance(part, MultipartReader):
            # Never part of an upload, and each nesting level is a recursion (a depth bomb).
            raise InvalidUpload("Nested multipart bodies are not supported.")
        if part.name == FILE_PART:
            return IncomingFile(
                filename=part.filename,
                content_type=part.headers.get(hdrs.CONTENT_TYPE),
                reader=part,
            )
        ignored += await _skip(part, MAX_IGNORED_PART_BYTES - ignored)
    raise InvalidUpload(f"The multipart body has more than {MAX_IGNORED_PARTS} parts before the 'file' part.")


async def _skip(part: BodyPartReader, budget: int) -> int:
    """Read and drop a part; FileTooLarge when the ignored parts pass `budget` bytes."""
    total = 0
    while chunk := await part.read_chunk():
        total += len(chunk)
        if total > budget:
            raise FileTooLarge("The upload carries too much data besides the file.")
    return total


async def upload_attachment(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")

    async def open_file() -> IncomingFile:
        return await _file_part(request)

    try:
        attachment = await attachment_service(request).upload(
            who.tenant_id, who.user_id, chat_id, content_length=request.content_length, open_file=open_file
        )
    except UploadConcurrencyLimit as exc:
        raise ProblemError(
            exc.status,
            exc.code,
            exc.detail,
            title=exc.title,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None
    return json_response(attachment, status=201)


async def get_attachment(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    attachment_id = path_uuid(request, "attachment_id")
    return json_response(
        await attachment_service(request).get(who.tenant_id, who.user_id, chat_id, attachment_id)
    )


async def delete_attachment(request: web.Request) -> web.Response:
    who = identity(request)
    chat_id = path_uuid(request, "id")
    attachment_id = path_uuid(request, "attachment_id")
    await attachment_service(request).delete(who.tenant_id, who.user_id, chat_id, attachment_id)
    return web.Response(status=204)


def register(app: web.Application, prefix: str) -> None:
    app.router.add_post(f"{prefix}/v1/chats/{{id}}/attachments", upload_attachment)
    app.router.add_get(f"{prefix}/v1/chats/{{id}}/attachments/{{attachment_id}}", get_attachment)
    app.router.add_delete(f"{prefix}/v1/chats/{{id}}/attachments/{{attachment_id}}", delete_attachment)
