"""Attachments: upload, read and delete rules, and the helpers the send path uses (original-api.md §6).

Upload, in order (each failure changes nothing and leaves no temporary file behind):
1. at most `rag.max_concurrent_uploads` uploads at once per process → 503 `upload_concurrency_limit`;
2. the caller's live chat (404) and its model's catalog entry (document size cap, code interpreter);
3. `Content-Length` above the largest allowed file (plus multipart framing) → 413 before reading a byte;
4. the file part's MIME type: parameters dropped, lower-cased, aliases mapped, `application/octet-stream`
   resolved from the extension, `text/csv` stored as `text/plain` (when `rag.allow_csv_upload`), then the
   allow-list → 415 `unsupported_file_type`; its kind (image or document) picks the size cap → 413 again
   from `Content-Length`;
5. the body is streamed to a temporary file under the data directory while bytes are counted, so memory
   stays bounded whatever the size; passing the cap → 413 at once;
6. images must decode (Pillow) and get a WebP thumbnail of at most 128x128; an undecodable image → 415;
7. in one transaction, with the chat row locked: the per-chat document count and byte total → 400
   `document_limit_exceeded` / `storage_limit_exceeded`, then the row is inserted as `pending`;
8. the storage plugin of the model's provider stores the file (`uploaded`); documents other than xlsx are
   added to the chat's vector store (created on first use: insert-first placeholder, the winner creates it,
   the others wait for its id); xlsx is routed to the code interpreter; images are never indexed;
9. `ready`. A storage failure marks the row `failed` with an `error_code`, soft-deletes it (the client
   never got its id) and, when a provider file exists, enqueues its clean-up; the client gets a 502.

Delete: not owned chat / missing attachment → 404; uploaded by someone else → 403; already deleted → 204;
linked to any message → 409 `attachment_locked`; else soft delete with `cleanup_status='pending'` and an
`attachment_cleanup` outbox message, in one transaction.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import os
import re
import tempfile
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import databases
import msgspec
import uuid6

from minichat_host import constants
from minichat_host.config import Config
from minichat_host.db.repos import attachments as repo
from minichat_host.db.repos.attachments import AttachmentRecord, ChatRef, VectorStoreRecord
from minichat_host.domain.errors import ChatNotFound, DomainError, InvalidModel
from minichat_host.domain.wire import AttachmentKind, AttachmentSummary, ImgThumbnail
from minichat_host.plugins.errors import PermanentError, PluginConfigError, PluginError
from minichat_host.plugins.types import ModelCatalogEntry, PolicySnapshot, SearchHit, StoredFile
from minichat_host.providers.base import Cell, InputImage, LocalSearch, LocalSheetReader
from minichat_host.storage import InvalidImage, Thumbnail, local_file_path, make_thumbnail, read_sheet
from minichat_host.storage.paths import upload_tmp_dir

log = logging.getLogger("minichat.attachments")

Clock = Callable[[], dt.datetime]
AttachmentStatus = Literal["pending", "uploaded", "ready", "failed"]

KIB: Final = 1024
MIB: Final = 1024 * 1024
# Multipart framing around the file (boundaries, part headers, small extra fields) allowed on top of the
# file size cap when judging a request by its Content-Length alone.
MULTIPART_OVERHEAD_BYTES: Final = 64 * KIB
READ_CHUNK_BYTES: Final = 256 * KIB
WRITE_BUFFER_BYTES: Final = 1 * MIB
RETRY_AFTER_SECONDS: Final = 5
MAX_FILENAME_CHARS: Final = 255
MAX_EXTENSION_CHARS: Final = 16
DEFAULT_FILENAME: Final = "upload"
# Storage hooks that move a whole file get more time than the default hook timeout.
TRANSFER_HOOK_TIMEOUT_SECONDS: Final = 300.0
VECTOR_STORE_WAIT_SECONDS: Final = 60.0
STALE_PLACEHOLDER_SECONDS: Final = 120.0
STALE_UPLOAD_SECONDS: Final = 3600.0

# --- MIME types -----------------------------------------------------------------------------------
XLSX: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
DOCX: Final = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
PPTX: Final = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
OCTET_STREAM: Final = "application/octet-stream"
CSV: Final = "text/csv"

DOCUMENT_TYPES: Final = frozenset(
    {
        "application/pdf",
        "text/plain",
        "text/markdown",
        "text/html",
        DOCX,
        PPTX,
        XLSX,
        "application/json",
        "text/x-python",
        "text/x-java",
        "text/javascript",
        "text/typescript",
        "text/x-rust",
        "text/x-go",
        "text/x-csharp",
        "text/x-ruby",
        "text/x-sql",
    }
)
IMAGE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})

# Extension → type, for `application/octet-stream` parts (browsers send it for .md, .py, ...).
EXTENSION_TYPES: Final[Mapping[str, str]] = {
    ".pdf": "application/pdf",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".docx": DOCX,
    ".pptx": PPTX,
    ".xlsx": XLSX,
    ".json": "application/json",
    ".py": "text/x-python",
    ".java": "text/x-java",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".ts": "text/typescript",
    ".rs": "text/x-rust",
    ".go": "text/x-go",
    ".cs": "text/x-csharp",
    ".rb": "text/x-ruby",
    ".sql": "text/x-sql",
    ".csv": CSV,
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}
# Other spellings clients send for allowed types.
TYPE_ALIASES: Final[Mapping[str, str]] = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "text/x-markdown": "text/markdown",
    "application/javascript": "text/javascript",
    "application/x-javascript": "text/javascript",
    "text/x-typescript": "text/typescript",
    "application/typescript": "text/typescript",
    "application/x-typescript": "text/typescript",
    "text/x-script.python": "text/x-python",
    "application/x-python": "text/x-python",
    "application/x-python-code": "text/x-python",
    "application/csv": CSV,
    "text/x-csv": CSV,
}
# The extension of the file name sent to a provider (`{chat_id}_{attachment_id}.{ext}`), per stored type.
TYPE_EXTENSIONS: Final[Mapping[str, str]] = {
    "application/pdf": "pdf",
    "text/plain": "txt",
    "text/markdown": "md",
    "text/html": "html",
    DOCX: "docx",
    PPTX: "pptx",
    XLSX: "xlsx",
    "application/json": "json",
    "text/x-python": "py",
    "text/x-java": "java",
    "text/javascript": "js",
    "text/typescript": "ts",
    "text/x-rust": "rs",
    "text/x-go": "go",
    "text/x-csharp": "cs",
    "text/x-ruby": "rb",
    "text/x-sql": "sql",
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
}
_MIME_SYNTAX: Final = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")


# --- errors ---------------------------------------------------------------------------------------
class AttachmentNotFound(DomainError):
    default_status = 404
    default_code = "attachment_not_found"
    default_title = "Attachment not found"


class AttachmentForbidden(DomainError):
    """Deleting an attachment someone else uploaded (the one 403 of the attachment API)."""

    default_status = 403
    default_code = "forbidden"
    default_title = "Forbidden"


class AttachmentLocked(DomainError):
    default_status = 409
    default_code = "attachment_locked"
    default_title = "Conflict"


class InvalidUpload(DomainError):
    """A multipart body without a boundary, a `file` part, its Content-Type or any bytes."""

    default_status = 400
    default_code = "invalid_upload"
    default_title = "Bad Request"


class UnsupportedFileType(DomainError):
    default_status = 415
    default_code = "unsupported_file_type"
    default_title = "unsupported_file_type"


class FileTooLarge(DomainError):
    default_status = 413
    default_code = "file_too_large"
    default_title = "file_too_large"


class DocumentLimitExceeded(DomainError):
    default_status = 400
    default_code = "document_limit_exceeded"
    default_title = "document_limit_exceeded"


class StorageLimitExceeded(DomainError):
    default_status = 400
    default_code = "storage_limit_exceeded"
    default_title = "storage_limit_exceeded"


class UploadConcurrencyLimit(DomainError):
    """Too many uploads in progress; the API answers with `Retry-After: RETRY_AFTER_SECONDS`."""

    default_status = 503
    default_code = "upload_concurrency_limit"
    default_title = "upload_concurrency_limit"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, extra={"retry_after": RETRY_AFTER_SECONDS})


class CodeInterpreterUnsupported(DomainError):
    """An xlsx upload to a chat whose model has no code interpreter."""

    default_status = 400
    default_code = "code_interpreter_not_supported"
    default_title = "code_interpreter_not_supported"


class StorageFailed(DomainError):
    """The storage plugin could not store or index the file (the upload is discarded)."""

    default_status = 502
    default_code = "provider_error"
    default_title = "provider_error"


class InvalidAttachment(DomainError):
    default_status = 400
    default_code = "invalid_attachment"
    default_title = "invalid_attachment"


class TooManyImages(DomainError):
    default_status = 400
    default_code = "too_many_images"
    default_title = "too_many_images"


# --- wire shape -----------------------------------------------------------------------------------
class Attachment(msgspec.Struct, kw_only=True, omit_defaults=True):
    """File attachment (document or image) on a chat: the body of upload (201) and GET. Provider ids are
    never exposed; null optionals are omitted."""

    id: uuid.UUID
    filename: str
    content_type: str
    size_bytes: int
    status: str
    kind: AttachmentKind
    created_at: dt.datetime
    error_code: str | None = None
    doc_summary: str | None = None
    img_thumbnail: ImgThumbnail | None = None
    summary_updated_at: dt.datetime | None = None


def thumbnail_of(record: AttachmentRecord) -> ImgThumbnail | None:
    """The stored WebP preview of a ready image, or None."""
    if (
        record.status != "ready"
        or record.img_thumbnail is None
        or not record.img_thumbnail_width
        or not record.img_thumbnail_height
    ):
        return None
    return ImgThumbnail(
        content_type="image/webp",
        width=record.img_thumbnail_width,
        height=record.img_thumbnail_height,
        data_base64=base64.b64encode(record.img_thumbnail).decode("ascii"),
    )


def _kind(value: str) -> AttachmentKind:
    return "image" if value == "image" else "document"


def to_wire(record: AttachmentRecord) -> Attachment:
    return Attachment(
        id=record.id,
        filename=record.filename,
        content_type=record.content_type,
        size_bytes=record.size_bytes,
        status=record.status,
        kind=_kind(record.attachment_kind),
        created_at=record.created_at,
        error_code=record.error_code,
        doc_summary=record.doc_summary,
        img_thumbnail=thumbnail_of(record),
        summary_updated_at=record.summary_updated_at,
    )


def to_summary(record: AttachmentRecord) -> AttachmentSummary:
    """The attachment as a message lists it."""
    return AttachmentSummary(
        attachment_id=record.id,
        kind=_kind(record.attachment_kind),
        filename=record.filename,
        status=record.status,
        img_thumbnail=thumbnail_of(record),
    )


# --- pure rules -----------------------------------------------------------------------------------
def sanitize_filename(raw: str | None) -> str:
    """A display name safe to store and echo: the last path component, without control or format
    characters (no header injection, no bidi tricks), NFC, at most 255 characters keeping the extension;
    `upload` when nothing is left. The name is never used as a path on disk."""
    name = unicodedata.normalize("NFC", raw or "")
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C"))
    name = name.strip()
    if name in ("", ".", ".."):
        return DEFAULT_FILENAME
    if len(name) <= MAX_FILENAME_CHARS:
        return name
    stem, dot, extension = name.rpartition(".")
    if dot and stem and 0 < len(extension) <= MAX_EXTENSION_CHARS:
        keep = MAX_FILENAME_CHARS - len(extension) - 1
        return f"{stem[:keep].rstrip()}.{extension}"
    return name[:MAX_FILENAME_CHARS].rstrip()


def _extension(filename: str) -> str:
    _, dot, extension = filename.rpartition(".")
    return f".{extension.lower()}" if dot else ""


def normalize_content_type(raw: str | None, filename: str, *, allow_csv: bool) -> str:
    """The stored MIME type of an upload, or an error: 400 when the part has no Content-Type, 415 when
    the type is not allowed (see the module doc for the steps)."""
    if raw is None or not raw.strip():
        raise InvalidUpload("The file part has no Content-Type header.")
    mime = raw.split(";", 1)[0].strip().lower()
    mime = TYPE_ALIASES.get(mime, mime)
    if mime == OCTET_STREAM:
        resolved = EXTENSION_TYPES.get(_extension(filename))
        if resolved is None:
            raise UnsupportedFileType(
                f"Cannot determine a supported file type for {filename!r} sent as {OCTET_STREAM}."
            )
        mime = resolved
    if mime == CSV:
        if not allow_csv:
            raise UnsupportedFileType("CSV uploads are disabled on this server.")
        mime = "text/plain"
    if not _MIME_SYNTAX.match(mime) or (mime not in DOCUMENT_TYPES and mime not in IMAGE_TYPES):
        raise UnsupportedFileType(f"Files of type {mime[:128]!r} are not supported.")
    return mime


def kind_of(content_type: str) -> AttachmentKind:
    return "image" if content_type in IMAGE_TYPES else "document"


def provider_filename(chat_id: uuid.UUID, attachment_id: uuid.UUID, content_type: str) -> str:
    """The name a provider sees: ids only, never the user's file name."""
    return f"{chat_id}_{attachment_id}.{TYPE_EXTENSIONS.get(content_type, 'bin')}"


def new_attachment_id() -> uuid.UUID:
    """A UUIDv7 (time-ordered), as the original uses for attachment ids."""
    return uuid.UUID(int=uuid6.uuid7().int)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class UploadLimits:
    document_bytes: int
    image_bytes: int
    documents_per_chat: int
    bytes_per_chat: int

    def for_kind(self, kind: AttachmentKind) -> int:
        return self.image_bytes if kind == "image" else self.document_bytes

    @property
    def largest(self) -> int:
        return max(self.document_bytes, self.image_bytes)


def upload_limits(config: Config, model: ModelCatalogEntry | None) -> UploadLimits:
    """Documents: `rag.uploaded_file_max_size_kb` and the model's `max_file_size_mb`, whichever is lower."""
    rag = config.rag
    document_bytes = rag.uploaded_file_max_size_kb * KIB
    if model is not None and model.general_config.max_file_size_mb > 0:
        document_bytes = min(document_bytes, model.general_config.max_file_size_mb * MIB)
    return UploadLimits(
        document_bytes=document_bytes,
        image_bytes=rag.uploaded_image_max_size_kb * KIB,
        documents_per_chat=rag.max_documents_per_chat,
        bytes_per_chat=rag.max_total_upload_mb_per_chat * MIB,
    )


def _human_size(size: int) -> str:
    return f"{size / MIB:.1f} MiB" if size >= MIB else f"{size / KIB:.0f} KiB"


# --- ports ------------------------------------------------------------------------------------------
class ChunkReader(Protocol):
    """The file part's body (aiohttp's `BodyPartReader` fits): `b""` at the end."""

    async def read_chunk(self, size: int = ...) -> bytes: ...


@dataclass(frozen=True, slots=True)
class IncomingFile:
    """The `file` part of an upload as the HTTP layer found it (headers as sent, body not yet read)."""

    filename: str | None
    content_type: str | None
    reader: ChunkReader


class HookCaller(Protocol):
    """`PluginHost.call` (storage hooks resolve per provider through `provider_id`)."""

    async def call(self, capability: str, hook: str, **kwargs: Any) -> Any: ...


class OutboxTransactionPort(Protocol):
    async def enqueue(self, queue: str, key: uuid.UUID | str | int, payload: Any) -> Any: ...


class OutboxPort(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[OutboxTransactionPort]: ...


class CatalogPort(Protocol):
    """`CatalogService.current_policy` (domain/catalog.py), reduced to what uploads need."""

    async def current_policy(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> Any: ...


class UploadSlots:
    """At most `limit` uploads at once in this process; the next one is refused, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.active >= self.limit:
            raise UploadConcurrencyLimit(
                f"Too many uploads in progress (at most {self.limit}); "
                f"retry in {RETRY_AFTER_SECONDS} seconds."
            )
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


# --- clean-up event -------------------------------------------------------------------------------
class AttachmentCleanupEvent(msgspec.Struct, kw_only=True):
    """Payload of the `attachment_cleanup` queue (original-outbox-and-plugins.md §2)."""

    event_type: str
    tenant_id: uuid.UUID
    chat_id: uuid.UUID
    attachment_id: uuid.UUID
    provider_file_id: str | None
    vector_store_id: str | None
    storage_backend: str
    attachment_kind: str
    deleted_at: dt.datetime


def cleanup_event(record: AttachmentRecord, deleted_at: dt.datetime) -> AttachmentCleanupEvent:
    return AttachmentCleanupEvent(
        event_type="attachment_deleted",
        tenant_id=record.tenant_id,
        chat_id=record.chat_id,
        attachment_id=record.id,
        provider_file_id=record.provider_file_id,
        vector_store_id=None,
        storage_backend=record.storage_backend,
        attachment_kind=record.attachment_kind,
        deleted_at=deleted_at,
    )


# --- the service ----------------------------------------------------------------------------------
@dataclass
class _Received:
    path: Path
    size: int


class AttachmentService:
    """Upload, read and delete the caller's attachments."""

    def __init__(
        self,
        database: databases.Database,
        *,
        config: Config,
        catalog: CatalogPort,
        plugins: HookCaller,
        outbox: OutboxPort,
        clock: Clock = utc_now,
    ) -> None:
        self._db = database
        self._config = config
        self._catalog = catalog
        self._plugins = plugins
        self._outbox = outbox
        self._clock = clock
        self._data_dir = config.data_dir()
        self.slots = UploadSlots(config.rag.max_concurrent_uploads)
        self._transfer_timeout = max(config.plugins.hook_timeout_seconds, TRANSFER_HOOK_TIMEOUT_SECONDS)

    # --- upload -------------------------------------------------------------------------------------
    async def upload(
        self,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        chat_id: uuid.UUID,
        *,
        content_length: int | None,
        open_file: Callable[[], Awaitable[IncomingFile]],
    ) -> Attachment:
        """Store one file in the caller's chat and return it `ready` (see the module doc).

        `open_file` is called once the request may proceed (concurrency, chat, Content-Length); it
        parses up to the `file` part and raises `InvalidUpload` for a malformed body.
        """
        async with self.slots.slot():
            chat = await self._require_chat(tenant_id, user_id, chat_id)
            model = await self._model_of(chat)
            limits = upload_limits(self._config, model)
            if content_length is not None and content_length > limits.largest + MULTIPART_OVERHEAD_BYTES:
                raise FileTooLarge(f"The upload is larger than the limit of {_human_size(limits.largest)}.")
            incoming = await open_file()
            filename = sanitize_filename(incoming.filename)
            content_type = normalize_content_type(
                incoming.content_type, filename, allow_csv=self._config.rag.allow_csv_upload
            )
            kind = kind_of(content_type)
            if content_type == XLSX and not model.general_config.tool_support.code_interpreter:
                raise CodeInterpreterUnsupported(
                    f"Model {model.id} has no code interpreter, which spreadsheets need."
                )
            cap = limits.for_kind(kind)
            if content_length is not None and content_length > cap + MULTIPART_OVERHEAD_BYTES:
                raise FileTooLarge(f"{kind.capitalize()}s may be at most {_human_size(cap)}.")
            if kind == "document":
                documents, _ = await repo.chat_usage(self._db, chat.id)
                if documents >= limits.documents_per_chat:
                    raise DocumentLimitExceeded(
                        f"A chat may hold at most {limits.documents_per_chat} documents."
                    )
            received = await self._receive(incoming.reader, cap, kind)
            try:
                if received.size == 0:
                    raise InvalidUpload("The file is empty.")
                thumbnail = None
                if kind == "image":
                    thumbnail = await self._thumbnail(received.path)
                record = await self._store(
                    chat, model, limits, filename, content_type, kind, received, thumbnail
                )
            finally:
                await asyncio.to_thread(received.path.unlink, True)
        return to_wire(record)

    async def _require_chat(self, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID) -> ChatRef:
        chat = await repo.owned_live_chat(self._db, tenant_id, user_id, chat_id)
        if chat is None:
            raise ChatNotFound(f"Chat not found: {chat_id}", title="Chat not found")
        return chat

    async def _model_of(self, chat: ChatRef) -> ModelCatalogEntry:
        policy = await self._catalog.current_policy(chat.tenant_id, chat.user_id)
        snapshot: PolicySnapshot = policy.snapshot
        # The chat's model is fixed for its life: a model disabled later still names its provider.
        for entry in snapshot.model_catalog:
            if entry.id == chat.model:
                return entry
        raise InvalidModel(f"The chat's model {chat.model!r} is no longer in the catalog.")

    async def _receive(self, reader: ChunkReader, cap: int, kind: AttachmentKind) -> _Received:
        """Stream the part into a temporary file, counting bytes; FileTooLarge as soon as `cap` is passed."""
        directory = upload_tmp_dir(self._data_dir)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix="upload-", suffix=".part", dir=directory)
        path = Path(name)
        size = 0
        try:
            with os.fdopen(fd, "wb") as handle:
                buffer = bytearray()
                while True:
                    chunk = await reader.read_chunk(READ_CHUNK_BYTES)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > cap:
                        raise FileTooLarge(f"{kind.capitalize()}s may be at most {_human_size(cap)}.")
                    buffer += chunk
                    if len(buffer) >= WRITE_BUFFER_BYTES:
                        # Disk writes leave the event loop; the buffer bounds memory at ~1 MiB per upload.
                        await asyncio.to_thread(handle.write, buffer)
                        buffer = bytearray()
                if buffer:
                    await asyncio.to_thread(handle.write, buffer)
        except BaseException:
            await asyncio.to_thread(path.unlink, True)
            raise
        return _Received(path=path, size=size)

    @staticmethod
    async def _thumbnail(path: Path) -> Thumbnail:
        try:
            return await asyncio.to_thread(make_thumbnail, path)
        except InvalidImage as exc:
            raise UnsupportedFileType(f"The image cannot be read: {exc}") from None

    async def _store(
        self,
        chat: ChatRef,
        model: ModelCatalogEntry,
        limits: UploadLimits,
        filename: str,
        content_type: str,
        kind: AttachmentKind,
        received: _Received,
        thumbnail: Thumbnail | None,
    ) -> AttachmentRecord:
        attachment_id = new_attachment_id()
        provider_id = model.provider_id
        async with self._db.transaction():
            # The exclusive chat row lock makes concurrent uploads into one chat count one after another.
            locked = await repo.owned_live_chat(self._db, chat.tenant_id, chat.user_id, chat.id, lock=True)
            if locked is None:
                raise ChatNotFound(f"Chat not found: {chat.id}", title="Chat not found")
            documents, stored_bytes = await repo.chat_usage(self._db, chat.id)
            if kind == "document" and documents >= limits.documents_per_chat:
                raise DocumentLimitExceeded(f"A chat may hold at most {limits.documents_per_chat} documents.")
            if stored_bytes + received.size > limits.bytes_per_chat:
                raise StorageLimitExceeded(
                    f"A chat may hold at most {_human_size(limits.bytes_per_chat)} of files; "
                    f"{_human_size(stored_bytes)} are in use."
                )
            await repo.insert_pending(
                self._db,
                attachment_id=attachment_id,
                tenant_id=chat.tenant_id,
                chat_id=chat.id,
                uploaded_by_user_id=chat.user_id,
                filename=filename,
                content_type=content_type,
                size_bytes=received.size,
                storage_backend=provider_id,
                attachment_kind=kind,
                now=self._clock(),
            )

        try:
            stored = await self._storage_call(
                provider_id,
                "minichat_storage_upload_file",
                timeout=self._transfer_timeout,
                tenant_id=str(chat.tenant_id),
                chat_id=str(chat.id),
                attachment_id=str(attachment_id),
                filename=provider_filename(chat.id, attachment_id, content_type),
                content_type=content_type,
                path=str(received.path),
                purpose="assistants",
            )
            file_id = msgspec.convert(stored, StoredFile, from_attributes=True).file_id
        except BaseException as exc:
            await self._abandon(attachment_id, "upload_failed", None)
            if not isinstance(exc, Exception):
                raise
            raise _storage_error(exc, "The file could not be stored") from exc

        if not await repo.set_uploaded(self._db, attachment_id, provider_file_id=file_id, now=self._clock()):
            # The chat was deleted while the file travelled: nothing will clean this file up but us.
            await self._delete_provider_file_quietly(provider_id, chat.tenant_id, file_id)
            raise ChatNotFound(f"Chat not found: {chat.id}", title="Chat not found")

        for_file_search = kind == "document" and content_type != XLSX
        if for_file_search:
            stage = "vector_store_failed"
            try:
                store = await self._vector_store_for(chat, provider_id)
                stage = "indexing_failed"
                await self._storage_call(
                    provider_id,
                    "minichat_storage_add_file_to_vector_store",
                    timeout=self._transfer_timeout,
                    tenant_id=str(chat.tenant_id),
                    vector_store_id=store.vector_store_id,
                    file_id=file_id,
                    attributes={"attachment_id": str(attachment_id)},
                )
                await repo.increment_file_count(self._db, store.id)
            except BaseException as exc:
                await self._abandon(attachment_id, stage, file_id)
                if not isinstance(exc, Exception) or isinstance(exc, DomainError):
                    raise
                raise _storage_error(exc, "The file could not be indexed for search") from exc

        thumb = (thumbnail.data, thumbnail.width, thumbnail.height) if thumbnail is not None else None
        ready = await repo.set_ready(
            self._db,
            attachment_id,
            for_file_search=for_file_search,
            for_code_interpreter=content_type == XLSX,
            thumbnail=thumb,
            now=self._clock(),
        )
        record = await repo.get_by_id(self._db, attachment_id)
        if not ready or record is None or record.deleted_at is not None:
            raise ChatNotFound(f"Chat not found: {chat.id}", title="Chat not found")
        return record

    async def _storage_call(
        self,
        provider_id: str,
        hook: str,
        *,
        timeout: float,  # noqa: ASYNC109 - the plugin host enforces it per hook call
        **kwargs: Any,
    ) -> Any:
        return await self._plugins.call(
            constants.CAP_STORAGE, hook, provider_id=provider_id, timeout=timeout, **kwargs
        )

    async def _delete_provider_file_quietly(
        self, provider_id: str, tenant_id: uuid.UUID, file_id: str
    ) -> None:
        try:
            await self._storage_call(
                provider_id,
                "minichat_storage_delete_file",
                timeout=self._config.plugins.hook_timeout_seconds,
                tenant_id=str(tenant_id),
                file_id=file_id,
            )
        except Exception as exc:
            log.warning("could not delete orphaned provider file %s: %s", file_id, exc)

    async def _abandon(self, attachment_id: uuid.UUID, error_code: str, provider_file_id: str | None) -> None:
        """A failed upload: `failed` with its code, soft-deleted (the client never saw its id), and the
        provider file (if one was stored) handed to the clean-up queue; all in one transaction."""
        now = self._clock()
        try:
            async with self._outbox.transaction() as tx:
                await repo.set_failed(self._db, attachment_id, error_code=error_code, now=now)
                if await repo.discard(
                    self._db, attachment_id, provider_file=provider_file_id is not None, now=now
                ):
                    record = await repo.get_by_id(self._db, attachment_id)
                    if record is not None and provider_file_id is not None:
                        await tx.enqueue(
                            constants.QUEUE_ATTACHMENT_CLEANUP, record.tenant_id, cleanup_event(record, now)
                        )
        except Exception:
            log.exception("could not record the failed upload of attachment %s", attachment_id)

    async def _vector_store_for(self, chat: ChatRef, provider_id: str) -> VectorStoreRecord:
        """The chat's vector store, created on first use by exactly one uploader (insert-first placeholder:
        the insert winner creates the store and sets its id; the others wait for the id)."""
        deadline = time.monotonic() + VECTOR_STORE_WAIT_SECONDS
        delay = 0.05
        while True:
            row = await repo.vector_store_of_chat(self._db, chat.id)
            if row is not None and row.vector_store_id is not None:
                return row
            if row is None:
                row_id = uuid.uuid4()
                claimed = await repo.insert_vector_store_placeholder(
                    self._db,
                    row_id=row_id,
                    tenant_id=chat.tenant_id,
                    chat_id=chat.id,
                    provider=provider_id,
                    now=self._clock(),
                )
                if claimed:
                    return await self._create_vector_store(chat, provider_id, row_id)
                if await repo.owned_live_chat(self._db, chat.tenant_id, chat.user_id, chat.id) is None:
                    raise ChatNotFound(f"Chat not found: {chat.id}", title="Chat not found")
                continue
            if (self._clock() - row.created_at).total_seconds() > STALE_PLACEHOLDER_SECONDS:
                # Its creator died between the insert and setting the id: let the next round retry.
                await repo.delete_placeholder(self._db, row.id)
                continue
            if time.monotonic() > deadline:
                raise StorageFailed("Timed out waiting for the chat's vector store to be created.")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _create_vector_store(
        self, chat: ChatRef, provider_id: str, row_id: uuid.UUID
    ) -> VectorStoreRecord:
        try:
            created = await self._storage_call(
                provider_id,
                "minichat_storage_create_vector_store",
                timeout=self._config.plugins.hook_timeout_seconds,
                tenant_id=str(chat.tenant_id),
                chat_id=str(chat.id),
            )
        except BaseException:
            await repo.delete_placeholder(self._db, row_id)
            raise
        vector_store_id = str(created)
        if not await repo.set_vector_store_id(self._db, row_id, vector_store_id):
            # Our placeholder was judged stale and removed meanwhile: this store has no owner row.
            with contextlib.suppress(Exception):
                await self._storage_call(
                    provider_id,
                    "minichat_storage_delete_vector_store",
                    timeout=self._config.plugins.hook_timeout_seconds,
                    tenant_id=str(chat.tenant_id),
                    vector_store_id=vector_store_id,
                )
            raise StorageFailed("The chat's vector store was replaced while it was being created.")
        return VectorStoreRecord(
            id=row_id,
            tenant_id=chat.tenant_id,
            chat_id=chat.id,
            vector_store_id=vector_store_id,
            provider=provider_id,
            file_count=0,
            created_at=self._clock(),
        )

    # --- read and delete ----------------------------------------------------------------------------
    async def get(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID, attachment_id: uuid.UUID
    ) -> Attachment:
        await self._require_chat(tenant_id, user_id, chat_id)
        record = await repo.get_in_chat(self._db, chat_id, attachment_id)
        if record is None or record.deleted_at is not None:
            raise AttachmentNotFound(f"Attachment not found: {attachment_id}")
        return to_wire(record)

    async def delete(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID, attachment_id: uuid.UUID
    ) -> None:
        """Soft-delete and enqueue the provider clean-up in one transaction (rules in the module doc)."""
        async with self._outbox.transaction() as tx:
            await self._require_chat(tenant_id, user_id, chat_id)
            record = await repo.get_in_chat(self._db, chat_id, attachment_id, lock=True)
            if record is None:
                raise AttachmentNotFound(f"Attachment not found: {attachment_id}")
            if record.uploaded_by_user_id != user_id:
                raise AttachmentForbidden("Only the user who uploaded an attachment may delete it.")
            if record.deleted_at is not None:
                return
            if await repo.is_referenced(self._db, chat_id, attachment_id):
                raise AttachmentLocked(
                    "The attachment is used by a message and cannot be deleted.", title="Conflict"
                )
            now = self._clock()
            await repo.soft_delete_for_cleanup(self._db, attachment_id, now=now)
            await tx.enqueue(constants.QUEUE_ATTACHMENT_CLEANUP, record.tenant_id, cleanup_event(record, now))

    def purge_stale_uploads(self, older_than_seconds: float = STALE_UPLOAD_SECONDS) -> int:
        """Remove temporary upload files a crashed process left behind; the count removed."""
        directory = upload_tmp_dir(self._data_dir)
        if not directory.is_dir():
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in directory.glob("upload-*.part"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed


def _storage_error(exc: Exception, what: str) -> Exception:
    """The client-facing error for a storage failure (a 502 problem; domain errors pass through)."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, PluginConfigError):
        return StorageFailed(f"{what}: storage is not configured.", code="configuration_error")
    if isinstance(exc, PermanentError):
        return StorageFailed(f"{what}: the storage provider rejected it.", code="provider_error")
    if isinstance(exc, PluginError):
        return StorageFailed(f"{what}: the storage provider is unavailable.", code="provider_unavailable")
    return StorageFailed(f"{what}.", code="provider_error")


# --- the send path ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image attached to the current message, as the provider request needs it."""

    attachment_id: uuid.UUID
    provider_file_id: str
    content_type: str
    filename: str

    def to_input_image(self) -> InputImage:
        return InputImage(file_id=self.provider_file_id)


@dataclass(frozen=True, slots=True)
class MessageAttachments:
    """The validated attachments of one message, in the order the request listed them."""

    records: tuple[AttachmentRecord, ...] = ()

    @property
    def ids(self) -> tuple[uuid.UUID, ...]:
        return tuple(record.id for record in self.records)

    @property
    def images(self) -> tuple[ImagePart, ...]:
        return tuple(
            ImagePart(r.id, r.provider_file_id or "", r.content_type, r.filename)
            for r in self.records
            if r.attachment_kind == "image"
        )

    @property
    def summaries(self) -> list[AttachmentSummary]:
        return [to_summary(record) for record in self.records]


async def validate_message_attachments(
    db: databases.Database,
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    chat_id: uuid.UUID,
    attachment_ids: Sequence[uuid.UUID],
    max_images: int,
) -> MessageAttachments:
    """Check `attachment_ids` of a send (call inside the send transaction, before linking).

    Each id must be unique in the list, exist in this chat, be live, uploaded by the caller and `ready`,
    else 400 `invalid_attachment`; more than `max_images` images → 400 `too_many_images`. The rows are
    share-locked (PostgreSQL) until the transaction ends, so a concurrent DELETE sees the link (409).
    """
    if not attachment_ids:
        return MessageAttachments()
    if len(set(attachment_ids)) != len(attachment_ids):
        raise InvalidAttachment("Duplicate attachment IDs in request")
    found = await repo.lock_for_message(db, chat_id, attachment_ids)
    records: list[AttachmentRecord] = []
    for attachment_id in attachment_ids:
        record = found.get(attachment_id)
        if record is None or record.deleted_at is not None or record.tenant_id != tenant_id:
            raise InvalidAttachment(f"Attachment {attachment_id} not found in this chat")
        if record.uploaded_by_user_id != user_id:
            raise InvalidAttachment(f"Attachment {attachment_id} was uploaded by another user")
        if record.status != "ready":
            raise InvalidAttachment(f"Attachment {attachment_id} is not ready (status: {record.status})")
        records.append(record)
    images = sum(1 for record in records if record.attachment_kind == "image")
    if images > max_images:
        raise TooManyImages(f"At most {max_images} images may be attached to one message; got {images}.")
    return MessageAttachments(tuple(records))


async def link_message_attachments(
    db: databases.Database,
    *,
    tenant_id: uuid.UUID,
    chat_id: uuid.UUID,
    message_id: uuid.UUID,
    attachments: MessageAttachments,
    now: dt.datetime,
) -> None:
    """Write the message_attachments rows of a validated set (same transaction as the user message)."""
    await repo.link_to_message(
        db,
        tenant_id=tenant_id,
        chat_id=chat_id,
        message_id=message_id,
        attachment_ids=attachments.ids,
        now=now,
    )


@dataclass(frozen=True, slots=True)
class ContextAttachments:
    """What context assembly and the provider request need from the chat's files."""

    image_parts: tuple[ImagePart, ...] = ()
    # Ready documents of the chat (file search and code interpreter inputs), for the reserve estimate.
    ready_document_count: int = 0
    # The chat's vector store when it holds at least one ready searchable document.
    vector_store_id: str | None = None
    code_interpreter_file_ids: tuple[str, ...] = ()
    # attachment_id → the user's filename, to title file citations.
    citation_titles: dict[str, str] = field(default_factory=dict)

    @property
    def file_search(self) -> bool:
        return self.vector_store_id is not None


async def context_attachments(
    db: databases.Database, *, chat_id: uuid.UUID, current: MessageAttachments | None = None
) -> ContextAttachments:
    """The chat's files as the next provider call sees them (images: only the current message's)."""
    documents = await repo.ready_documents(db, chat_id)
    searchable = [d for d in documents if d.for_file_search]
    store = await repo.vector_store_of_chat(db, chat_id) if searchable else None
    return ContextAttachments(
        image_parts=current.images if current is not None else (),
        ready_document_count=len(documents),
        vector_store_id=store.vector_store_id if store is not None else None,
        code_interpreter_file_ids=tuple(
            d.provider_file_id for d in documents if d.for_code_interpreter and d.provider_file_id
        ),
        citation_titles={str(d.id): d.filename for d in documents},
    )


async def attachment_summaries(
    db: databases.Database, chat_id: uuid.UUID, message_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[AttachmentSummary]]:
    """`AttachmentSummary` lists per message, for message listings."""
    linked = await repo.attachments_of_messages(db, chat_id, message_ids)
    return {message_id: [to_summary(r) for r in records] for message_id, records in linked.items()}


# --- local provider adapters --------------------------------------------------------------------------
def make_local_search(database: databases.Database, plugins: HookCaller) -> LocalSearch:
    """`local_search(tenant_id, vector_store_id, query, max_results)` for providers without hosted file
    search: the storage plugin of the provider that owns the store answers (`minichat_storage_search`),
    and hits of attachments deleted since they were indexed are dropped."""

    async def local_search(
        tenant_id: str, vector_store_id: str, query: str, max_results: int
    ) -> list[SearchHit]:
        tenant = uuid.UUID(tenant_id)
        owner = await repo.vector_store_provider(database, tenant, vector_store_id)
        if owner is None:
            return []
        provider_id, _chat_id = owner
        raw = await plugins.call(
            constants.CAP_STORAGE,
            "minichat_storage_search",
            provider_id=provider_id,
            tenant_id=tenant_id,
            vector_store_id=vector_store_id,
            query=query,
            max_results=max_results,
        )
        hits = msgspec.convert(raw or [], list[SearchHit], from_attributes=True)
        by_id: dict[uuid.UUID, list[SearchHit]] = {}
        for hit in hits:
            try:
                by_id.setdefault(uuid.UUID(hit.attachment_id), []).append(hit)
            except ValueError:
                continue
        live = await repo.live_attachment_ids(database, tenant, by_id)
        return [hit for hit in hits if _hit_id(hit) in live][:max_results]

    return local_search


def _hit_id(hit: SearchHit) -> uuid.UUID | None:
    try:
        return uuid.UUID(hit.attachment_id)
    except ValueError:
        return None


def make_local_sheet_reader(data_dir: Path) -> LocalSheetReader:
    """`local_sheet_reader(tenant_id, file_id)`: the first sheet of a spreadsheet the `local` storage
    holds (openpyxl, read in a worker thread); [] when the file is missing or not a workbook."""

    async def local_sheet_reader(tenant_id: str, file_id: str) -> list[list[Cell]]:
        try:
            path = local_file_path(data_dir, tenant_id, file_id)
            return await asyncio.to_thread(read_sheet, path)
        except Exception as exc:
            log.warning("cannot read spreadsheet %s: %s: %s", file_id, type(exc).__name__, exc)
            return []

    return local_sheet_reader
