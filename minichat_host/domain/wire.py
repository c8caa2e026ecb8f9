"""Wire shapes of the chat REST API (chats, messages, reactions, models, quota status), as msgspec structs.

Names match the schema names of the original's openapi.json so the published OpenAPI can be generated
from these very structs. Encoding rules that existing clients rely on:
- optional members default to None and are omitted when None (`omit_defaults=True`);
- members the contract always sends are declared without a default, so they are encoded even when
  their value is null (`Message.my_reaction`, `PageInfo.next_cursor` / `prev_cursor`) or empty
  (`Message.attachments`);
- request bodies reject unknown members (`forbid_unknown_fields=True`): a misspelt field is answered
  with 422 instead of being silently ignored.
Timestamps are aware UTC datetimes (encoded RFC 3339 with `Z`); ids are UUIDs (encoded canonically).
Optional members are declared last (mypy does not model msgspec's `kw_only`), so JSON member order differs
slightly from the openapi listing; JSON objects are unordered.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

import msgspec

from minichat_host.domain.quota import QuotaPeriodStatus, QuotaStatusResponse, QuotaTierStatus

Role = Literal["user", "assistant", "system"]
ReactionValue = Literal["like", "dislike"]
AttachmentKind = Literal["document", "image"]
ModelTier = Literal["standard", "premium"]


class _Response(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class _Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


# --- pagination ---------------------------------------------------------------------------------------
class PageInfo(_Response):
    """Cursor-based pagination metadata: both cursors are always sent, null at either end."""

    next_cursor: str | None
    prev_cursor: str | None
    limit: int


# --- chats --------------------------------------------------------------------------------------------
class CreateChatRequest(_Request):
    """Body of `POST /v1/chats`: both members optional (title trimmed, 1..255 characters)."""

    title: str | None = None
    model: str | None = None


class UpdateChatTitleRequest(_Request):
    """Body of `PATCH /v1/chats/{id}`: the new title (trimmed, 1..255 characters)."""

    title: str


class ChatDetail(_Response):
    """Chat metadata with the number of visible messages; `title` is omitted when the chat has none."""

    id: uuid.UUID
    model: str
    is_temporary: bool
    message_count: int
    created_at: dt.datetime
    updated_at: dt.datetime
    title: str | None = None


class ChatsPage(_Response):
    """One page of the caller's chats, newest first."""

    items: list[ChatDetail]
    page_info: PageInfo


# --- messages -----------------------------------------------------------------------------------------
class ImgThumbnail(_Response):
    """Server-made WebP preview of an image attachment."""

    # No default: a default would be omitted on encoding, and clients expect the member.
    content_type: Literal["image/webp"]
    width: int
    height: int
    data_base64: str


class AttachmentSummary(_Response):
    """Lightweight attachment metadata embedded in a message."""

    attachment_id: uuid.UUID
    kind: AttachmentKind
    filename: str
    status: str
    img_thumbnail: ImgThumbnail | None = None


class Message(_Response):
    """A visible chat message. `attachments` and `my_reaction` are always present; the token counts and
    `model` are omitted when null (and the counts when 0)."""

    id: uuid.UUID
    request_id: uuid.UUID
    role: Role
    content: str
    attachments: list[AttachmentSummary]
    my_reaction: ReactionValue | None
    created_at: dt.datetime
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class MessagesPage(_Response):
    """One page of a chat's messages, oldest first."""

    items: list[Message]
    page_info: PageInfo


# --- reactions ----------------------------------------------------------------------------------------
class SetReactionRequest(_Request):
    """Body of `PUT …/reaction`. The value is checked by the domain (400 `validation_error`, as the
    original), so it is typed as a plain string here rather than as an enum (which would give 422)."""

    reaction: str


class ReactionResponse(_Response):
    """The caller's reaction on a message after an upsert."""

    message_id: uuid.UUID
    reaction: ReactionValue
    created_at: dt.datetime


# --- models -------------------------------------------------------------------------------------------
class Model(_Response):
    """A model visible to the caller (no provider ids, multipliers or policy internals)."""

    model_id: str
    display_name: str
    tier: ModelTier
    multiplier_display: str
    multimodal_capabilities: list[str]
    context_window: int
    description: str | None = None


class ModelList(_Response):
    """The enabled models of the caller's policy, in catalog order."""

    items: list[Model]


__all__ = [
    "AttachmentSummary",
    "ChatDetail",
    "ChatsPage",
    "CreateChatRequest",
    "ImgThumbnail",
    "Message",
    "MessagesPage",
    "Model",
    "ModelList",
    "PageInfo",
    "QuotaPeriodStatus",
    "QuotaStatusResponse",
    "QuotaTierStatus",
    "ReactionResponse",
    "SetReactionRequest",
    "UpdateChatTitleRequest",
]
