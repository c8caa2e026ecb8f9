"""Chats, the message list and reactions: the rules behind the non-streaming chat API.

Every operation is scoped by tenant **and** user. A chat that is missing, soft-deleted or owned by
someone else is `ChatNotFound` (404) — never 403 and never its data — and messages and reactions are
reached only through such an owned chat.

Decisions where the original is loose (documented for clients):
- `limit`: absent → 20; above 100 → clamped to 100 (as the original); 0, negative or not an integer →
  422 `invalid_limit`.
- `cursor`: opaque; one that does not decode, was tampered with, or belongs to another listing → 422
  `invalid_cursor`. A cursor carries its sort order, so later pages need no `$orderby`; an `$orderby`
  that disagrees with the cursor's order → 422 `invalid_cursor`.
- `$orderby`: only the listing's default key in either direction (`updated_at asc|desc` for chats,
  `created_at asc|desc` for messages, optionally followed by `id` in the same direction); anything
  else → 422 `invalid_orderby`. `$filter` is not supported → 422 `invalid_filter`.
- Titles are trimmed and must then be 1..255 characters without NUL characters, else 400
  `validation_error`.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

import databases
import uuid6

from minichat_host.db.repos import chats as chats_repo
from minichat_host.db.repos import messages as messages_repo
from minichat_host.db.repos import reactions as reactions_repo
from minichat_host.db.repos.common import DialectName, Executor, dialect_from_url_scheme
from minichat_host.db.repos.pagination import (
    InvalidCursorError,
    KeysetOrder,
    PageCursor,
    decode_cursor,
    encode_cursor,
    scope_fingerprint,
)
from minichat_host.domain.catalog import CatalogService, Clock, default_model, find_enabled, utc_now
from minichat_host.domain.errors import (
    ChatNotFound,
    InvalidListQuery,
    InvalidModel,
    InvalidReactionTarget,
    MessageNotFound,
    ValidationFailed,
)
from minichat_host.domain.wire import (
    AttachmentKind,
    AttachmentSummary,
    ChatDetail,
    ChatsPage,
    ImgThumbnail,
    Message,
    MessagesPage,
    PageInfo,
    ReactionResponse,
    ReactionValue,
    Role,
)

DEFAULT_PAGE_LIMIT: Final = 20
MAX_PAGE_LIMIT: Final = 100
MAX_TITLE_LENGTH: Final = 255
REACTIONS: Final[tuple[ReactionValue, ...]] = ("like", "dislike")

SortDirection = Literal["asc", "desc"]
ChatRecord = chats_repo.ChatRecord
# Runs inside the chat soft-delete transaction, after the chat row is marked deleted (e.g. to enqueue
# provider clean-up through the outbox). Raising rolls the whole deletion back.
ChatDeletionHook = Callable[[Executor, ChatRecord], Awaitable[None]]


def new_chat_id() -> uuid.UUID:
    """A UUIDv7 (time-ordered), as the original uses for chat ids."""
    return uuid.UUID(int=uuid6.uuid7().int)


# --- list queries ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PageRequest:
    """A validated list query: page size, opaque cursor, and an explicit sort direction if one was asked."""

    limit: int = DEFAULT_PAGE_LIMIT
    cursor: str | None = None
    direction: SortDirection | None = None


_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_LIMIT
    text = raw.strip()
    # ASCII digits only: int() would also take "+5", "1_0" and non-ASCII digits.
    if not _INTEGER.fullmatch(text):
        raise InvalidListQuery(
            f"limit must be an integer between 1 and {MAX_PAGE_LIMIT}", code="invalid_limit"
        )
    digits = text.lstrip("0")
    if text.startswith("-") or not digits:  # negative, or zero
        raise InvalidListQuery(f"limit must be at least 1 (got {text})", code="invalid_limit")
    # Any larger positive integer is clamped, without converting a huge digit string.
    return MAX_PAGE_LIMIT if len(digits) > 3 else min(int(digits), MAX_PAGE_LIMIT)


def _parse_orderby(raw: str, sort_field: str) -> SortDirection:
    invalid = InvalidListQuery(
        f"$orderby supports only '{sort_field} asc' or '{sort_field} desc' (optionally followed by 'id' in "
        "the same direction)",
        code="invalid_orderby",
    )
    items = [item.split() for item in raw.split(",")]
    if not 1 <= len(items) <= 2 or any(not 1 <= len(words) <= 2 for words in items):
        raise invalid
    directions: list[str] = []
    for index, words in enumerate(items):
        field = words[0]
        direction = words[1].lower() if len(words) == 2 else "asc"
        if field != (sort_field if index == 0 else "id") or direction not in ("asc", "desc"):
            raise invalid
        directions.append(direction)
    if len(set(directions)) != 1:
        raise invalid
    return "asc" if directions[0] == "asc" else "desc"


def parse_page_query(params: Mapping[str, str], *, sort_field: str) -> PageRequest:
    """Validate `limit`, `cursor`, `$orderby` and `$filter` of a list request (see the module docs)."""
    if "$filter" in params:
        raise InvalidListQuery("$filter is not supported on this listing", code="invalid_filter")
    limit = _parse_limit(params.get("limit"))
    # An empty `cursor=` is read as "first page", as clients that always send the parameter expect.
    cursor = params.get("cursor") or None
    raw_order = params.get("$orderby")
    direction = None if raw_order is None else _parse_orderby(raw_order, sort_field)
    return PageRequest(limit=limit, cursor=cursor, direction=direction)


def _resolve_page(
    page: PageRequest, *, scope: str, orders: Mapping[SortDirection, KeysetOrder], default: SortDirection
) -> tuple[KeysetOrder, PageCursor | None]:
    if page.cursor is None:
        return orders[page.direction or default], None
    try:
        order, cursor = decode_cursor(page.cursor, scope=scope, orders=list(orders.values()))
    except InvalidCursorError as exc:
        raise InvalidListQuery(f"Invalid cursor: {exc}", code="invalid_cursor") from None
    if page.direction is not None and orders[page.direction] is not order:
        raise InvalidListQuery("The cursor was made for another $orderby", code="invalid_cursor")
    return order, cursor


def _page_info(
    limit: int, order: KeysetOrder, scope: str, next_cursor: PageCursor | None, prev_cursor: PageCursor | None
) -> PageInfo:
    return PageInfo(
        next_cursor=None if next_cursor is None else encode_cursor(next_cursor, scope=scope, order=order),
        prev_cursor=None if prev_cursor is None else encode_cursor(prev_cursor, scope=scope, order=order),
        limit=limit,
    )


# --- titles ------------------------------------------------------------------------------------------
def normalize_title(raw: str) -> str:
    """The trimmed title, or `ValidationFailed` when it is blank, too long or holds a NUL character."""
    title = raw.strip()
    if not title:
        raise ValidationFailed("Title must not be empty")
    if len(title) > MAX_TITLE_LENGTH:
        raise ValidationFailed(f"Title must be at most {MAX_TITLE_LENGTH} characters (got {len(title)})")
    if "\x00" in title:
        raise ValidationFailed("Title must not contain NUL characters")
    return title


def _chat_detail(chat: ChatRecord, message_count: int) -> ChatDetail:
    return ChatDetail(
        id=chat.id,
        model=chat.model,
        title=chat.title,
        is_temporary=chat.is_temporary,
        message_count=message_count,
        created_at=chat.created_at,
        updated_at=chat.updated_at,
    )


def _listed_chat(
    id_: uuid.UUID,
    model: str,
    title: str | None,
    is_temporary: bool,
    created_at: dt.datetime,
    updated_at: dt.datetime,
    message_count: int,
) -> ChatDetail:
    """A listed chat's row straight into its response item (`chats_repo.ListedChatBuilder`)."""
    return ChatDetail(
        id=id_,
        model=model,
        title=title,
        is_temporary=is_temporary,
        message_count=message_count,
        created_at=created_at,
        updated_at=updated_at,
    )


def _dialect_of(database: databases.Database) -> DialectName:
    return dialect_from_url_scheme(str(database.url.scheme))


# --- chats -------------------------------------------------------------------------------------------
_CHAT_ORDERS: Final[Mapping[SortDirection, KeysetOrder]] = {
    "desc": chats_repo.ORDER_UPDATED_DESC,
    "asc": chats_repo.ORDER_UPDATED_ASC,
}


class ChatService:
    """Create, read, rename, list and soft-delete the caller's chats."""

    def __init__(
        self,
        database: databases.Database,
        catalog: CatalogService,
        *,
        clock: Clock = utc_now,
        deletion_hooks: Sequence[ChatDeletionHook] = (),
    ) -> None:
        self._database = database
        self._catalog = catalog
        self._clock = clock
        self._deletion_hooks: list[ChatDeletionHook] = list(deletion_hooks)

    def add_deletion_hook(self, hook: ChatDeletionHook) -> None:
        """Run `hook(conn, chat)` inside every chat soft-delete transaction (after the chat is marked)."""
        self._deletion_hooks.append(hook)

    async def require_chat(
        self,
        conn: Executor,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        chat_id: uuid.UUID,
        *,
        for_update: bool = False,
    ) -> ChatRecord:
        """The caller's live chat, or `ChatNotFound` (for sub-resources reached through a chat)."""
        chat = await chats_repo.get_live(conn, tenant_id, user_id, chat_id, for_update=for_update)
        if chat is None:
            raise ChatNotFound(f"Chat not found: {chat_id}")
        return chat

    async def create_chat(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, *, title: str | None, model: str | None
    ) -> ChatDetail:
        """A new chat with `model` (must be enabled) or the catalog's default model; 400 otherwise."""
        clean_title = None if title is None else normalize_title(title)
        policy = await self._catalog.current_policy(tenant_id, user_id)
        if model is None:
            entry = default_model(policy.snapshot)
            if entry is None:
                raise InvalidModel("No model is enabled for this user")
        else:
            entry = find_enabled(policy.snapshot, model)
            if entry is None:
                raise InvalidModel(f"Model is unknown or disabled: {model!r}")
        now = self._clock()
        chat = ChatRecord(
            id=new_chat_id(),
            tenant_id=tenant_id,
            user_id=user_id,
            model=entry.id,
            title=clean_title,
            is_temporary=False,
            created_at=now,
            updated_at=now,
        )
        async with self._database.connection() as conn, conn.transaction():
            await chats_repo.insert_chat(conn, chat)
        return _chat_detail(chat, 0)

    async def get_chat(self, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID) -> ChatDetail:
        counted = await chats_repo.get_live_counted(self._database, tenant_id, user_id, chat_id)
        if counted is None:
            raise ChatNotFound(f"Chat not found: {chat_id}")
        return _chat_detail(counted.chat, counted.message_count)

    async def rename_chat(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID, *, title: str
    ) -> ChatDetail:
        """Set the title (trimmed, 1..255) and `updated_at`."""
        clean_title = normalize_title(title)
        async with self._database.connection() as conn, conn.transaction():
            renamed = await chats_repo.rename_live(
                conn, tenant_id, user_id, chat_id, title=clean_title, now=self._clock()
            )
            if renamed is None:
                raise ChatNotFound(f"Chat not found: {chat_id}")
            counted = await chats_repo.get_live_counted(conn, tenant_id, user_id, chat_id)
        message_count = 0 if counted is None else counted.message_count
        return _chat_detail(renamed, message_count)

    async def delete_chat(self, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID) -> None:
        """Soft-delete the chat and run the deletion hooks, all in one transaction; a second delete is 404."""
        async with self._database.connection() as conn, conn.transaction():
            deleted = await chats_repo.soft_delete_live(conn, tenant_id, user_id, chat_id, now=self._clock())
            if deleted is None:
                raise ChatNotFound(f"Chat not found: {chat_id}")
            for hook in self._deletion_hooks:
                await hook(conn, deleted)

    async def list_chats(self, tenant_id: uuid.UUID, user_id: uuid.UUID, page: PageRequest) -> ChatsPage:
        """The caller's live chats, newest first by (updated_at, id) unless `$orderby` said otherwise."""
        scope = scope_fingerprint("chats", tenant_id, user_id)
        order, cursor = _resolve_page(page, scope=scope, orders=_CHAT_ORDERS, default="desc")
        result = await chats_repo.list_page(
            self._database,
            tenant_id,
            user_id,
            order=order,
            limit=page.limit,
            cursor=cursor,
            build=_listed_chat,
        )
        return ChatsPage(
            items=result.items,
            page_info=_page_info(page.limit, order, scope, result.next_cursor, result.prev_cursor),
        )


# --- messages ----------------------------------------------------------------------------------------
_MESSAGE_ORDERS: Final[Mapping[SortDirection, KeysetOrder]] = {
    "asc": messages_repo.ORDER_CREATED_ASC,
    "desc": messages_repo.ORDER_CREATED_DESC,
}


def _thumbnail(record: messages_repo.AttachmentSummaryRecord) -> ImgThumbnail | None:
    width, height = record.thumbnail_width, record.thumbnail_height
    if not record.thumbnail or not width or not height:
        return None
    return ImgThumbnail(
        content_type="image/webp",
        width=width,
        height=height,
        data_base64=base64.b64encode(record.thumbnail).decode("ascii"),
    )


def _attachment_summary(record: messages_repo.AttachmentSummaryRecord) -> AttachmentSummary:
    return AttachmentSummary(
        attachment_id=record.attachment_id,
        kind=cast(AttachmentKind, record.kind),
        filename=record.filename,
        status=record.status,
        img_thumbnail=_thumbnail(record),
    )


def _reaction_value(value: str | None) -> ReactionValue | None:
    if value == "like":
        return "like"
    if value == "dislike":
        return "dislike"
    return None


def _listed_message(
    id_: uuid.UUID,
    request_id: uuid.UUID | None,
    role: str,
    content: str,
    model: str | None,
    input_tokens: int,
    output_tokens: int,
    created_at: dt.datetime,
    reaction: str | None,
) -> Message:
    """A listed message's row straight into its response item (`messages_repo.ListedMessageBuilder`); its
    attachments, when it has some, are set once the page's are read."""
    assert request_id is not None, "hidden messages (no request_id) are never listed"
    return Message(
        id=id_,
        request_id=request_id,
        role=cast(Role, role),
        content=content,
        model=model or None,
        # The original omits a count of 0 as well as a missing one.
        input_tokens=input_tokens or None,
        output_tokens=output_tokens or None,
        attachments=[],
        # Only assistant messages take reactions; anything else reads as none.
        my_reaction=None if reaction is None or role != "assistant" else _reaction_value(reaction),
        created_at=created_at,
    )


class MessageService:
    """The visible messages of the caller's chat, with attachments and the caller's reactions."""

    def __init__(self, database: databases.Database, chats: ChatService) -> None:
        self._database = database
        self._chats = chats

    async def list_messages(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID, page: PageRequest
    ) -> MessagesPage:
        """Oldest first by (created_at, id); the caller's reactions come with the page, attachments once per
        page for the messages that have some (no N+1)."""
        scope = scope_fingerprint("messages", tenant_id, user_id, chat_id)
        order, cursor = _resolve_page(page, scope=scope, orders=_MESSAGE_ORDERS, default="asc")
        # No transaction (on SQLite every transaction takes the write lock), and no connection held across the
        # statements either: usually there is one (the page), and a statement on the database itself runs on
        # a pooled connection without databases' per-connection bookkeeping (db/engine.py `run_prepared`).
        conn = self._database
        # The owner check rides in the page query; only an empty page asks whether the chat is there.
        result = await messages_repo.list_visible_page(
            conn,
            tenant_id,
            chat_id,
            order=order,
            limit=page.limit,
            cursor=cursor,
            owner=user_id,
            build=_listed_message,
        )
        if not result.items:
            await self._chats.require_chat(conn, tenant_id, user_id, chat_id)
        attachments = await messages_repo.attachment_summaries(
            conn, tenant_id, chat_id, result.with_attachments
        )
        if attachments:
            for message in result.items:
                linked = attachments.get(message.id)
                if linked:
                    message.attachments = [_attachment_summary(a) for a in linked]
        return MessagesPage(
            items=result.items,
            page_info=_page_info(page.limit, order, scope, result.next_cursor, result.prev_cursor),
        )


# --- reactions ---------------------------------------------------------------------------------------
class ReactionService:
    """The caller's like/dislike on assistant messages of their chats."""

    def __init__(self, database: databases.Database, chats: ChatService, *, clock: Clock = utc_now) -> None:
        self._database = database
        self._chats = chats
        self._clock = clock
        self._dialect = _dialect_of(database)

    async def set_reaction(
        self,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        chat_id: uuid.UUID,
        message_id: uuid.UUID,
        reaction: str,
    ) -> ReactionResponse:
        """Upsert the caller's reaction: 400 for a value other than like/dislike or a non-assistant
        message, 404 for a chat or message the caller cannot see."""
        reaction_value = _reaction_value(reaction)
        if reaction_value is None:
            raise ValidationFailed(f"reaction must be 'like' or 'dislike' (got {reaction!r})")
        async with self._database.connection() as conn, conn.transaction():
            await self._chats.require_chat(conn, tenant_id, user_id, chat_id)
            message = await messages_repo.get_visible(conn, tenant_id, chat_id, message_id)
            if message is None:
                raise MessageNotFound(f"Message not found: {message_id}")
            if message.role != "assistant":
                raise InvalidReactionTarget("Reactions are only allowed on assistant messages")
            stored = await reactions_repo.upsert(
                conn,
                self._dialect,
                tenant_id=tenant_id,
                message_id=message_id,
                user_id=user_id,
                reaction=reaction_value,
                now=self._clock(),
            )
        return ReactionResponse(
            message_id=stored.message_id,
            reaction=_reaction_value(stored.reaction) or reaction_value,
            created_at=stored.created_at,
        )

    async def remove_reaction(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID, message_id: uuid.UUID
    ) -> None:
        """Remove the caller's reaction (nothing to remove is fine); the chat and message must exist."""
        async with self._database.connection() as conn, conn.transaction():
            await self._chats.require_chat(conn, tenant_id, user_id, chat_id)
            if await messages_repo.get_visible(conn, tenant_id, chat_id, message_id) is None:
                raise MessageNotFound(f"Message not found: {message_id}")
            await reactions_repo.delete(conn, tenant_id=tenant_id, message_id=message_id, user_id=user_id)
