"""Streamed turns: send, replay, turn status, retry / edit / delete (original-domain.md §2, -api.md §4-5).

`TurnService` runs the pre-stream checks in the original's order, each answered as a `DomainError` before
any stream opens, writes the reserve + user message + running turn in one transaction, assembles the
context and hands back a `TurnStream` whose frames the HTTP layer writes. The turn is finalized by
`Finalizer` (one transaction, before the terminal frame). A failure after the turn row exists (context
budget, provider resolution) finalizes the turn at once as `failed` and is then reported as the problem.

A send's provider request leaves inside that transaction, once the quota decision is final (the user's
rows are locked) and before the writes and the COMMIT, which then overlap the provider's time to first
token. The run takes no event and finalizes nothing until the commit; if the transaction fails, the run
is abandoned (the upstream request aborted) and nothing of the turn remains. A crash in between leaves
no turn, as a crash before the request would: the provider may have read the prompt, which no usage
event then accounts for (as for a crash mid-stream, whose turn the watchdog settles from its reserve).

Send, in order: blank content 400 → chat 404 → chat's model enabled in the current snapshot 400 →
idempotency (completed: replay; running/failed/cancelled: 409 `request_id_conflict`) → parallel guard 409
`turn_already_running` → duplicate attachment ids 400 → images over the per-message limit 400 →
[one transaction] quota cascade 429 `quota_exceeded` (+ quota_scope) → web search kill switch 400 →
input too long 422 → images disabled 400 / model without vision 415 → attachment checks 400 → writes.
A unique-index clash on insert (a concurrent send) is re-checked and answered like the checks above.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import datetime as dt
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, Protocol

import databases
import msgspec

from minichat_host import constants
from minichat_host.config import Config
from minichat_host.db.repos import chats as chats_repo
from minichat_host.db.repos import quota_ledger, turns
from minichat_host.domain import events
from minichat_host.domain.catalog import find_enabled
from minichat_host.domain.context import (
    AssembledContext,
    EnabledTools,
    HistoryMessage,
    SummaryInput,
    assemble_context,
)
from minichat_host.domain.credits import estimate_text_tokens, utf8_len
from minichat_host.domain.errors import ChatNotFound, ContextBudgetExceeded, DomainError, QuotaExceeded
from minichat_host.domain.finalize import (
    Finalizer,
    FinalizeResult,
    OutboxPort,
    SummaryTrigger,
    TurnContext,
    TurnOutcome,
)
from minichat_host.domain.models import Period
from minichat_host.domain.quota import (
    Downgrade,
    Granted,
    Reject,
    TurnReserve,
    decide_quota,
    ensure_input_fits,
    estimate_input_tokens,
    periods_for,
    reserve_for_model,
    reserve_writes,
)
from minichat_host.domain.streaming import FrameSink, StreamLimits, TurnRun
from minichat_host.plugins.types import (
    AuditAttachment,
    AuditEnvelope,
    ModelCatalogEntry,
    PolicySnapshot,
    UserLimits,
)
from minichat_host.providers.base import (
    CodeInterpreterTool,
    ContentPart,
    FileSearchTool,
    InputImage,
    InputMessage,
    InputText,
    LlmProvider,
    OutputText,
    ProviderError,
    ProviderRequest,
    Tool,
    WebSearchTool,
)

log = logging.getLogger("minichat.turns")

Clock = Callable[[], dt.datetime]
VISION_INPUT: Final = "VISION_INPUT"
_SHUTDOWN_GRACE_SECONDS: Final = 10.0
_LOCK_CONFLICT_ATTEMPTS: Final = 3


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --- errors of the turn API ---------------------------------------------------------------------------
class EmptyContent(DomainError):
    default_status = 400
    default_code = "invalid_request"
    default_title = "Bad Request"


def check_content(content: str) -> None:
    """Blank content is refused, and so is NUL (PostgreSQL text cannot store it; SQLite would truncate)."""
    if not content.strip():
        raise EmptyContent("Message content must not be empty")
    if "\x00" in content:
        raise EmptyContent("Message content must not contain NUL characters")


class ChatModelUnavailable(DomainError):
    """The chat's (locked) model is no longer enabled in the caller's catalog."""

    default_status = 400
    default_code = "invalid_model"
    default_title = "Invalid Model"


class RequestIdConflict(DomainError):
    default_status = 409
    default_code = "request_id_conflict"
    default_title = "Conflict"


class TurnAlreadyRunning(DomainError):
    default_status = 409
    default_code = "turn_already_running"
    default_title = "Conflict"


class InvalidAttachment(DomainError):
    default_status = 400
    default_code = "invalid_attachment"
    default_title = "invalid_attachment"


class TooManyImages(DomainError):
    default_status = 400
    default_code = "too_many_images"
    default_title = "too_many_images"


class WebSearchDisabled(DomainError):
    default_status = 400
    default_code = "web_search_disabled"
    default_title = "web_search_disabled"


class ImagesDisabled(DomainError):
    default_status = 400
    default_code = "images_disabled"
    default_title = "images_disabled"


class UnsupportedMedia(DomainError):
    default_status = 415
    default_code = "unsupported_media"
    default_title = "unsupported_media"


class ProviderUnavailable(DomainError):
    default_status = 502
    default_code = "provider_error"
    default_title = "provider_error"


class ReplayUnavailable(DomainError):
    default_status = 500
    default_code = "replay_unavailable"
    default_title = "Failed to replay turn"


class TurnNotFound(DomainError):
    default_status = 404
    default_code = "turn_not_found"
    default_title = "turn_not_found"


class TurnForbidden(DomainError):
    default_status = 403
    default_code = "forbidden"
    default_title = "forbidden"


class InvalidTurnState(DomainError):
    default_status = 400
    default_code = "invalid_turn_state"
    default_title = "invalid_turn_state"


class NotLatestTurn(DomainError):
    default_status = 409
    default_code = "not_latest_turn"
    default_title = "not_latest_turn"


class GenerationInProgress(DomainError):
    default_status = 409
    default_code = "generation_in_progress"
    default_title = "generation_in_progress"


# --- wire shapes ----------------------------------------------------------------------------------------
class WebSearchOption(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Controls web search for this turn (`enabled` is required inside the object)."""

    enabled: bool


class SendMessageRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of `POST /v1/chats/{id}/messages:stream`."""

    content: str
    request_id: uuid.UUID | None = None
    attachment_ids: Annotated[list[uuid.UUID], msgspec.Meta(max_length=20)] = msgspec.field(
        default_factory=list
    )
    web_search: WebSearchOption | None = None


class EditTurnRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of `PATCH /v1/chats/{id}/turns/{request_id}`: the replacement user message."""

    content: str


TurnStatusState = Literal["running", "done", "error", "cancelled"]
_API_STATE: Final[dict[str, TurnStatusState]] = {
    "running": "running",
    "completed": "done",
    "failed": "error",
    "cancelled": "cancelled",
}


class TurnStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """`GET /v1/chats/{id}/turns/{request_id}`: the authoritative state of one turn."""

    request_id: uuid.UUID
    state: TurnStatusState
    error_code: str | None = None
    assistant_message_id: uuid.UUID | None = None
    updated_at: dt.datetime


# --- what the HTTP layer gets -------------------------------------------------------------------------
class TurnStream(Protocol):
    """One streamed response: `relay()` writes its frames to the client's sink, True when the terminal
    frame was written; `detach()` when the client is gone."""

    async def relay(self, sink: FrameSink) -> bool: ...

    def detach(self) -> None: ...


class ReplayStream:
    """A completed turn replayed: stream_started, one delta with the stored text, done. No side effects."""

    def __init__(self, frames: Sequence[events.SseFrame]) -> None:
        self._frames = tuple(frames)

    async def relay(self, sink: FrameSink) -> bool:
        for frame in self._frames:
            if not await sink.write_frame(frame):
                return False
        return True

    def detach(self) -> None:
        """Nothing runs behind a replay."""


class PolicyPort(Protocol):
    """What the turn service needs of the model policy (`CatalogService`)."""

    async def current_version(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> int: ...

    async def snapshot(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, policy_version: int
    ) -> PolicySnapshot: ...

    async def user_limits(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, policy_version: int
    ) -> UserLimits: ...


class ProviderPort(Protocol):
    """What the turn service needs of the provider registry."""

    def get(self, provider_id: str) -> LlmProvider: ...


# --- internal plans -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Who:
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    trace_id: str | None


@dataclass(frozen=True, slots=True)
class _Policy:
    version: int
    snapshot: PolicySnapshot
    limits: UserLimits


@dataclass(frozen=True, slots=True)
class _Inputs:
    """The request as preflight and context assembly see it."""

    content: str
    web_search: bool
    images: tuple[turns.AttachmentRow, ...]
    attachments: tuple[turns.AttachmentRow, ...]
    file_search_documents: tuple[turns.AttachmentRow, ...]
    code_interpreter_files: tuple[turns.AttachmentRow, ...]
    vector_store_id: str | None


def _tool_inputs(
    content: str,
    web_search: bool,
    attached: tuple[turns.AttachmentRow, ...],
    documents: Sequence[turns.AttachmentRow],
    vector_store_id: str | None,
) -> _Inputs:
    return _Inputs(
        content=content,
        web_search=web_search,
        images=tuple(a for a in attached if a.attachment_kind == "image"),
        attachments=attached,
        file_search_documents=tuple(d for d in documents if d.for_file_search) if vector_store_id else (),
        code_interpreter_files=tuple(d for d in documents if d.for_code_interpreter and d.provider_file_id),
        vector_store_id=vector_store_id,
    )


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A running turn with its preflight, ready to be streamed."""

    who: _Who
    chat: chats_repo.ChatRecord
    turn_id: uuid.UUID
    request_id: uuid.UUID
    policy: _Policy
    granted: Granted
    periods: tuple[Period, ...]
    inputs: _Inputs
    boundary: turns.Boundary | None
    # The summary and history, when read already (a send reads them before its transaction).
    context_rows: _ContextRows | None = None


_ContextRows = tuple[turns.SummaryRow | None, list[turns.MessageRow]]


class _Unread(enum.Enum):
    """A summary not read yet (None is a chat without one)."""

    UNREAD = enum.auto()


_UNREAD: Final = _Unread.UNREAD


@dataclass(frozen=True, slots=True)
class _LaunchFailure:
    """Why a reserved turn cannot run: finalized as failed with `code`, then `error` answers the client."""

    ctx: TurnContext
    code: str
    detail: str
    error: DomainError


class TurnService:
    """Send / replay / status / retry / edit / delete, and the live runs of this process."""

    def __init__(
        self,
        *,
        database: databases.Database,
        outbox: OutboxPort,
        policy: PolicyPort,
        providers: ProviderPort,
        config: Config,
        clock: Clock = utc_now,
    ) -> None:
        self._db = database
        self._outbox = outbox
        self._policy = policy
        self._providers = providers
        self._config = config
        self._clock = clock
        self._fan_out_reads = database.url.dialect != "sqlite"
        self.finalizer = Finalizer(database=database, outbox=outbox, config=config, clock=clock)
        self._runs: dict[uuid.UUID, TurnRun] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def clock(self) -> Clock:
        return self._clock

    # --- send ---------------------------------------------------------------------------------------
    async def send(
        self,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        chat_id: uuid.UUID,
        body: SendMessageRequest,
        *,
        trace_id: str | None = None,
    ) -> TurnStream:
        """Start (or replay) a turn; every pre-stream failure raises a `DomainError` and writes nothing."""
        who = _Who(tenant_id, user_id, trace_id)
        check_content(body.content)
        request_id = body.request_id or uuid.uuid4()
        looked = await turns.first_look(self._db, tenant_id, user_id, chat_id, request_id)
        if looked is None:
            raise ChatNotFound(f"Chat not found: {chat_id}")
        chat = looked.chat
        policy = await self._load_policy(who)
        if find_enabled(policy.snapshot, chat.model) is None:
            raise ChatModelUnavailable(f"The chat's model {chat.model!r} is not available")
        if looked.request_used and (replay := await self._idempotency(chat, request_id)) is not None:
            return replay
        if looked.turn_running:
            raise TurnAlreadyRunning("A turn is already running in this chat")
        documents = await turns.ready_documents(self._db, chat.id) if looked.has_ready_documents else []
        inputs = await self._gather_inputs(chat, body, documents, looked.vector_store_id)
        try:
            return await self._reserve_and_launch(
                who, chat, request_id, policy, inputs, body.attachment_ids, looked
            )
        except turns.TurnConflict:
            # A concurrent send won an index: answer as the checks above would have.
            if (replay := await self._idempotency(chat, request_id)) is not None:
                return replay
            raise TurnAlreadyRunning("A turn is already running in this chat") from None

    async def _require_chat(self, who: _Who, chat_id: uuid.UUID) -> chats_repo.ChatRecord:
        chat = await chats_repo.get_live(self._db, who.tenant_id, who.user_id, chat_id)
        if chat is None:
            raise ChatNotFound(f"Chat not found: {chat_id}")
        return chat

    async def _load_policy(self, who: _Who) -> _Policy:
        version = await self._policy.current_version(who.tenant_id, who.user_id)
        snapshot = await self._policy.snapshot(who.tenant_id, who.user_id, version)
        limits = await self._policy.user_limits(who.tenant_id, who.user_id, version)
        return _Policy(version, snapshot, limits)

    async def _idempotency(self, chat: chats_repo.ChatRecord, request_id: uuid.UUID) -> ReplayStream | None:
        """A completed turn of this request_id is replayed; any other turn of it is 409; None: unused id.

        The lookup includes soft-deleted turns, so a request_id is never reused.
        """
        existing = await turns.find_by_request(self._db, chat.id, request_id)
        if existing is None:
            return None
        return await self._replay_or_conflict(chat, existing)

    async def _replay_or_conflict(self, chat: chats_repo.ChatRecord, existing: turns.TurnRow) -> ReplayStream:
        if existing.state != "completed":
            raise RequestIdConflict(f"Request {existing.request_id} is already {_API_STATE[existing.state]}")
        return await self._replay(chat, existing)

    async def _replay(self, chat: chats_repo.ChatRecord, turn: turns.TurnRow) -> ReplayStream:
        message = (
            await turns.get_message(self._db, turn.assistant_message_id)
            if turn.assistant_message_id is not None
            else None
        )
        if message is None or message.deleted_at is not None:
            raise ReplayUnavailable("Failed to replay turn: the assistant message is no longer available")
        effective = message.model or turn.effective_model or chat.model
        downgraded = effective != chat.model
        return ReplayStream(
            [
                events.stream_started(turn.request_id, message.id, is_new_turn=False),
                events.delta(message.content),
                events.done(
                    input_tokens=message.input_tokens,
                    output_tokens=message.output_tokens,
                    effective_model=effective,
                    selected_model=chat.model,
                    quota_decision="downgrade" if downgraded else "allow",
                    downgrade_from=chat.model if downgraded else None,
                    downgrade_reason=(turn.downgrade_reason or "premium_quota_exhausted")
                    if downgraded
                    else None,
                    quota_warnings=None,
                ),
            ]
        )

    async def _gather_inputs(
        self,
        chat: chats_repo.ChatRecord,
        body: SendMessageRequest,
        documents: Sequence[turns.AttachmentRow],
        vector_store_id: str | None,
    ) -> _Inputs:
        """The message's attachments (duplicates 400, too many images 400) and the chat's tool inputs."""
        ids = list(body.attachment_ids)
        if len(set(ids)) != len(ids):
            raise InvalidAttachment("Duplicate attachment IDs in request")
        found = await turns.attachments_by_id(self._db, chat.id, ids)
        attached = tuple(found[i] for i in ids if i in found)
        images = tuple(a for a in attached if a.attachment_kind == "image")
        limit = self._config.rag.max_images_per_message
        if len(images) > limit:
            raise TooManyImages(f"At most {limit} images may be attached to one message")
        web_search = bool(body.web_search and body.web_search.enabled)
        return _tool_inputs(body.content, web_search, attached, documents, vector_store_id)

    async def _load_tool_inputs(
        self,
        chat: chats_repo.ChatRecord,
        content: str,
        web_search: bool,
        attached: tuple[turns.AttachmentRow, ...],
    ) -> _Inputs:
        documents = await turns.ready_documents(self._db, chat.id)
        store = await turns.vector_store_id(self._db, chat.tenant_id, chat.id)
        return _tool_inputs(content, web_search, attached, documents, store)

    # --- preflight + the turn transaction -------------------------------------------------------------
    def _preflight(
        self,
        chat_model: str,
        policy: _Policy,
        inputs: _Inputs,
        usage: dict[Any, Any],
        periods: Sequence[Period],
        prior_context_tokens: int,
    ) -> Granted:
        """The cascade and the checks that follow it (raises the 4xx of each); nothing is written here."""
        snapshot = policy.snapshot
        switches = snapshot.kill_switches
        selected = find_enabled(snapshot, chat_model)
        wants_ci = bool(inputs.code_interpreter_files) and not switches.disable_code_interpreter
        wants_files = bool(inputs.file_search_documents) and not switches.disable_file_search
        est_in = estimate_input_tokens(
            message_bytes=utf8_len(inputs.content),
            image_count=len(inputs.images),
            has_ready_documents=wants_files
            and (selected is None or selected.general_config.tool_support.file_search),
            web_search=inputs.web_search,
            code_interpreter=wants_ci
            and (selected is None or selected.general_config.tool_support.code_interpreter),
            prior_context_tokens=prior_context_tokens,
            budgets=self._config.estimation_budgets,
        )

        def reserve_for(model: ModelCatalogEntry) -> Any:
            return reserve_for_model(
                est_in,
                model,
                streaming_max_output_tokens=self._config.streaming.max_output_tokens,
                minimal_generation_floor=self._config.estimation_budgets.minimal_generation_floor,
            )

        decision = decide_quota(
            selected_model_id=chat_model,
            snapshot=snapshot,
            limits=policy.limits,
            usage=usage,
            periods=periods,
            reserve_for=reserve_for,
            wants_web_search=inputs.web_search,
            wants_code_interpreter=wants_ci,
            quota=self._config.quota,
        )
        if isinstance(decision, Reject):
            raise QuotaExceeded(decision.scope)
        if inputs.web_search and switches.disable_web_search:
            raise WebSearchDisabled("Web search is disabled")
        ensure_input_fits(utf8_len(inputs.content), decision.effective)
        if inputs.images:
            if switches.disable_images:
                raise ImagesDisabled("Image input is disabled")
            if VISION_INPUT not in decision.effective.multimodal_capabilities:
                raise UnsupportedMedia(f"Model {decision.effective.id} does not accept images")
        return decision

    def _check_attachments(
        self, who: _Who, attached: Sequence[turns.AttachmentRow], wanted: Sequence[uuid.UUID]
    ) -> None:
        by_id = {a.id: a for a in attached}
        for attachment_id in wanted:
            row = by_id.get(attachment_id)
            if row is None or row.deleted_at is not None:
                raise InvalidAttachment(f"Attachment {attachment_id} not found in this chat")
            if row.uploaded_by_user_id != who.user_id:
                raise InvalidAttachment(f"Attachment {attachment_id} was uploaded by another user")
            if row.status != "ready":
                raise InvalidAttachment(f"Attachment {attachment_id} is not ready (status {row.status})")

    async def _reserve_and_launch(
        self,
        who: _Who,
        chat: chats_repo.ChatRecord,
        request_id: uuid.UUID,
        policy: _Policy,
        inputs: _Inputs,
        attachment_ids: Sequence[uuid.UUID],
        looked: turns.FirstLook,
    ) -> TurnStream:
        """One transaction: locked quota rows → cascade and checks → context → the provider request →
        reserves, user message, links, turn. Then the run goes on, or the turn is finalized as failed when
        its context or provider could not be had.

        A PostgreSQL deadlock or serialization failure runs the transaction again (a few times).
        """
        for attempt in range(_LOCK_CONFLICT_ATTEMPTS):
            try:
                launched = await self._reserve_and_launch_once(
                    who, chat, request_id, policy, inputs, attachment_ids, looked
                )
            except Exception as exc:
                if not turns.is_lock_conflict(exc) or attempt + 1 == _LOCK_CONFLICT_ATTEMPTS:
                    raise
                log.warning("send on chat %s hit a lock conflict; retrying", chat.id)
                continue
            if isinstance(launched, _LaunchFailure):
                await self._fail_now(launched.ctx, launched.code, launched.detail)
                raise launched.error
            return launched
        raise AssertionError("unreachable")

    async def _reserve_and_launch_once(
        self,
        who: _Who,
        chat: chats_repo.ChatRecord,
        request_id: uuid.UUID,
        policy: _Policy,
        inputs: _Inputs,
        attachment_ids: Sequence[uuid.UUID],
        looked: turns.FirstLook,
    ) -> TurnRun | _LaunchFailure:
        now = self._clock()
        boundary = looked.boundary
        periods = tuple(periods_for(now))
        turn_id = uuid.uuid4()
        # The run's tasks start inside the transaction but must not join it (the outbox's transaction
        # handle and databases' live a context variable each): they get the context from before it.
        outside = contextvars.copy_context()
        # Read before the transaction, not inside it: on PostgreSQL the reads go out at once on other pooled
        # connections, which a transaction holding one of them must not wait for (a full pool would wait
        # for itself). What they read is the chat before this turn, which the transaction does not change.
        context_rows = await self._summary_and_history(chat.id, boundary, request_id, read=looked.summary)
        launched: TurnRun | _LaunchFailure | None = None
        try:
            lock = quota_ledger.user_lock_statement(self._db, who.tenant_id, who.user_id)
            # The outbox's transaction (nothing is enqueued here): on SQLite it queues this write behind the
            # outbox's own writes instead of racing them under the busy timeout.
            async with self._outbox.transaction(first_statement=lock):
                usage = await quota_ledger.load_usage(
                    self._db, who.tenant_id, who.user_id, periods, for_update=True
                )
                granted = self._preflight(
                    chat.model, policy, inputs, usage, periods, looked.prior_context_tokens
                )
                # Re-read under the transaction: an attachment may have been deleted since the first look.
                current = await turns.attachments_by_id(self._db, chat.id, attachment_ids)
                self._check_attachments(who, list(current.values()), attachment_ids)
                prepared = _Prepared(
                    who, chat, turn_id, request_id, policy, granted, periods, inputs, boundary, context_rows
                )
                # The decision is final under the lock: the provider request leaves now, and the writes
                # and the COMMIT below overlap the provider's time to first token. The run waits for the
                # commit before it relays, records or finalizes anything, and is abandoned if it fails.
                launched = await self._plan_and_start(prepared, before_commit=True, context=outside)
                await quota_ledger.apply_deltas(
                    self._db, who.tenant_id, who.user_id, reserve_writes(granted, periods), now=now
                )
                message_id = uuid.uuid4()
                await turns.insert_user_message_and_turn(
                    self._db,
                    message_id=message_id,
                    turn_id=turn_id,
                    tenant_id=who.tenant_id,
                    chat_id=chat.id,
                    request_id=request_id,
                    requester_user_id=who.user_id,
                    content=inputs.content,
                    token_estimate=estimate_text_tokens(
                        utf8_len(inputs.content), self._config.estimation_budgets
                    ),
                    web_search_enabled=inputs.web_search,
                    now=now,
                    preflight=_preflight_columns(policy.version, granted),
                )
                await turns.link_attachments(
                    self._db,
                    tenant_id=who.tenant_id,
                    chat_id=chat.id,
                    message_id=message_id,
                    attachment_ids=attachment_ids,
                    now=now,
                )
        except BaseException:
            if isinstance(launched, TurnRun):
                self._runs.pop(turn_id, None)
                launched.abandon()
            raise
        if isinstance(launched, TurnRun):
            launched.confirm()
        assert launched is not None
        return launched

    async def _boundary(self, chat_id: uuid.UUID) -> turns.Boundary | None:
        newest = await turns.newest_live_message(self._db, chat_id)
        return turns.Boundary(newest.created_at, newest.id) if newest is not None else None

    # --- launch: context, provider, run ------------------------------------------------------------------
    async def _summary_and_history(
        self,
        chat_id: uuid.UUID,
        boundary: turns.Boundary | None,
        request_id: uuid.UUID,
        *,
        read: turns.SummaryRow | _Unread | None = _UNREAD,
    ) -> _ContextRows:
        """The chat's thread summary (unless `read` already: a send's first look reads it) and the history
        after its frontier (the newest `limit` messages).

        On PostgreSQL, when both are read, they go out at once: the history is read without the frontier
        and cut at it here, which gives the same rows (the rows after the frontier are a prefix of the
        newest-first list).
        """
        limit = self._config.context.recent_messages_limit
        if not isinstance(read, _Unread) or not self._fan_out_reads or boundary is None:
            summary = await turns.thread_summary(self._db, chat_id) if isinstance(read, _Unread) else read
            history = await turns.context_history(
                self._db,
                chat_id,
                boundary=boundary,
                frontier=summary.frontier if summary else None,
                limit=limit,
                exclude_request_id=request_id,
            )
            return summary, history
        summary, recent = await asyncio.gather(
            turns.thread_summary(self._db, chat_id),
            turns.context_history(
                self._db,
                chat_id,
                boundary=boundary,
                frontier=None,
                limit=limit,
                exclude_request_id=request_id,
            ),
        )
        return summary, turns.after_position(recent, summary.frontier) if summary else recent

    async def _launch(self, prepared: _Prepared) -> TurnStream:
        """Start the provider run of a committed turn (retry, edit); a failure here finalizes it as failed."""
        launched = await self._plan_and_start(prepared)
        if isinstance(launched, _LaunchFailure):
            await self._fail_now(launched.ctx, launched.code, launched.detail)
            raise launched.error
        return launched

    async def _plan_and_start(
        self,
        prepared: _Prepared,
        *,
        before_commit: bool = False,
        context: contextvars.Context | None = None,
    ) -> TurnRun | _LaunchFailure:
        """Assemble the context and start the provider run, or say why the turn cannot run (the caller
        finalizes it as failed once it is committed)."""
        granted = prepared.granted
        effective = granted.effective
        assistant_message_id = uuid.uuid4()
        if prepared.context_rows is not None:
            summary, history = prepared.context_rows
        else:
            summary, history = await self._summary_and_history(
                prepared.chat.id, prepared.boundary, prepared.request_id
            )
        tools, tool_specs = self._tools(effective, prepared)
        base_ctx = self._turn_context(prepared, assistant_message_id, summary_trigger=None)
        try:
            assembled = assemble_context(
                model=effective,
                max_output_tokens_applied=granted.reserve.max_output_tokens_applied,
                tools=tools,
                context=self._config.context,
                summary=SummaryInput(summary.text, summary.token_estimate) if summary else None,
                history=[HistoryMessage(m.id, m.role, m.content, m.created_at) for m in history],
                current_text=prepared.inputs.content,
                current_image_refs=[a.provider_file_id or str(a.id) for a in prepared.inputs.images],
            )
        except ContextBudgetExceeded as exc:
            return _LaunchFailure(base_ctx, "context_budget_exceeded", exc.detail, exc)
        try:
            provider = self._providers.get(effective.provider_id)
        except ProviderError as exc:
            error = ProviderUnavailable(f"The model's provider {effective.provider_id!r} is not available")
            error.__cause__ = exc
            return _LaunchFailure(base_ctx, "provider_error", exc.message, error)
        ctx = dataclasses.replace(
            base_ctx,
            summary=SummaryTrigger(
                messages_truncated=assembled.messages_truncated,
                assembled_tokens=assembled.estimated_context_tokens,
                context_window=effective.context_window,
                max_output_applied=granted.reserve.max_output_tokens_applied,
            ),
        )
        request = self._provider_request(prepared, assembled, tool_specs)
        return self._start_run(
            prepared, ctx, provider, request, assembled, before_commit=before_commit, context=context
        )

    def _tools(self, model: ModelCatalogEntry, prepared: _Prepared) -> tuple[EnabledTools, list[Tool]]:
        switches = prepared.policy.snapshot.kill_switches
        support = model.general_config.tool_support
        inputs = prepared.inputs
        specs: list[Tool] = []
        file_search = (
            bool(inputs.file_search_documents and inputs.vector_store_id and support.file_search)
            and not switches.disable_file_search
        )
        if file_search and inputs.vector_store_id:
            specs.append(
                FileSearchTool(
                    vector_store_ids=[inputs.vector_store_id], max_num_results=model.max_num_results
                )
            )
        web_search = inputs.web_search and support.web_search and not switches.disable_web_search
        if web_search:
            specs.append(WebSearchTool(search_context_size=model.web_search_context_size))
        code_interpreter = (
            bool(inputs.code_interpreter_files)
            and support.code_interpreter
            and not switches.disable_code_interpreter
        )
        if code_interpreter:
            file_ids = [a.provider_file_id for a in inputs.code_interpreter_files if a.provider_file_id]
            specs.append(CodeInterpreterTool(file_ids=file_ids))
        return EnabledTools(file_search, web_search, code_interpreter), specs

    def _provider_request(
        self, prepared: _Prepared, assembled: AssembledContext, tools: list[Tool]
    ) -> ProviderRequest:
        model = prepared.granted.effective
        messages: list[InputMessage] = []
        for item in assembled.messages:
            parts: list[ContentPart]
            if item.role == "assistant":
                parts = [OutputText(text=item.text)]
            else:
                parts = [InputText(text=item.text)]
                parts.extend(InputImage(file_id=ref) for ref in item.image_refs)
            messages.append(InputMessage(role=item.role, content=parts))
        titles = {str(a.id): a.filename for a in prepared.inputs.file_search_documents}
        titles.update({str(a.id): a.filename for a in prepared.inputs.code_interpreter_files})
        return ProviderRequest(
            model=model.provider_model_id,
            input=messages,
            instructions=assembled.instructions,
            max_output_tokens=prepared.granted.reserve.max_output_tokens_applied,
            max_tool_calls=model.max_tool_calls if tools else None,
            tools=tools,
            api_params=model.general_config.api_params,
            user=f"{prepared.who.tenant_id}:{prepared.who.user_id}",
            metadata={"chat_id": str(prepared.chat.id), "request_id": str(prepared.request_id)},
            citation_titles=titles,
        )

    def _turn_context(
        self, prepared: _Prepared, assistant_message_id: uuid.UUID, *, summary_trigger: SummaryTrigger | None
    ) -> TurnContext:
        granted = prepared.granted
        return TurnContext(
            facts=events.TurnFacts(
                tenant_id=prepared.who.tenant_id,
                user_id=prepared.who.user_id,
                chat_id=prepared.chat.id,
                turn_id=prepared.turn_id,
                request_id=prepared.request_id,
                selected_model=prepared.chat.model,
                effective_model=granted.effective.id,
                policy_version_applied=prepared.policy.version,
            ),
            assistant_message_id=assistant_message_id,
            model=granted.effective,
            reserve=TurnReserve.of(granted.reserve),
            periods=prepared.periods,
            limits=prepared.policy.limits,
            quota_decision=granted.quota_decision,
            downgrade_from=granted.downgrade_from if isinstance(granted, Downgrade) else None,
            downgrade_reason=granted.reason if isinstance(granted, Downgrade) else None,
            attachments=tuple(_audit_attachment(a) for a in prepared.inputs.attachments),
            summary=summary_trigger,
            trace_id=prepared.who.trace_id,
        )

    async def _fail_now(self, ctx: TurnContext, code: str, detail: str) -> FinalizeResult:
        """Finalize a turn that never reached the provider (its reserve is settled per the billing table)."""
        return await self.finalizer.finalize(
            ctx, TurnOutcome(state="failed", error_code=code, error_detail=detail)
        )

    def _start_run(
        self,
        prepared: _Prepared,
        ctx: TurnContext,
        provider: LlmProvider,
        request: ProviderRequest,
        assembled: AssembledContext,
        *,
        before_commit: bool = False,
        context: contextvars.Context | None = None,
    ) -> TurnRun:
        turn_id = prepared.turn_id
        streaming = self._config.streaming
        quota = self._config.quota
        hooks = _RunHooks(self, ctx, turn_id)
        run = TurnRun(
            turn_id=turn_id,
            started=events.stream_started(
                prepared.request_id,
                ctx.assistant_message_id,
                is_new_turn=True,
                summary_tokens=assembled.summary_token_estimate if assembled.summary_applied else None,
            ),
            provider=provider,
            request=request,
            tenant_id=str(prepared.who.tenant_id),
            finalize=hooks.finalize,
            on_progress=hooks.on_progress,
            on_tool_done=hooks.on_tool_done,
            limits=StreamLimits(
                ping_interval_seconds=streaming.sse_ping_interval_seconds,
                progress_update_interval_seconds=streaming.progress_update_interval_seconds,
                channel_capacity=streaming.sse_channel_capacity,
                web_search_max_calls=quota.web_search_max_calls_per_message,
                code_interpreter_max_calls=quota.code_interpreter_max_calls_per_message,
            ),
        )
        self._runs[turn_id] = run
        task = run.start(before_commit=before_commit, context=context)
        task.add_done_callback(hooks.forget, context=context)
        if self._closing:
            run.detach("shutdown")
        return run

    # --- turn status ----------------------------------------------------------------------------------
    async def turn_status(
        self, tenant_id: uuid.UUID, user_id: uuid.UUID, chat_id: uuid.UUID, request_id: uuid.UUID
    ) -> TurnStatus:
        """The turn's state (soft-deleted turns included); 404 chat / turn, 403 another requester's turn."""
        turn = await turns.owned_turn_status(self._db, tenant_id, user_id, chat_id, request_id)
        if turn is None:
            await self._require_chat(_Who(tenant_id, user_id, None), chat_id)
            raise TurnNotFound(f"Turn not found: {request_id}")
        if turn.requester_user_id != user_id:
            raise TurnForbidden("The turn belongs to another requester")
        return TurnStatus(
            request_id=request_id,
            state=_API_STATE[turn.state],
            error_code=turn.error_code if turn.state == "failed" else None,
            assistant_message_id=turn.assistant_message_id,
            updated_at=turn.updated_at,
        )

    # --- mutations ------------------------------------------------------------------------------------
    async def delete_turn(
        self,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        chat_id: uuid.UUID,
        request_id: uuid.UUID,
        *,
        trace_id: str | None = None,
    ) -> None:
        """Soft-delete the latest terminal turn and its messages, with a `turn_delete` audit event."""
        who = _Who(tenant_id, user_id, trace_id)
        now = self._clock()
        async with self._outbox.transaction() as tx:
            chat, turn = await self._mutable_turn(who, chat_id, request_id)
            await turns.soft_delete_turn(self._db, turn, now=now)
            audit = events.delete_audit_event(
                tenant_id=tenant_id,
                actor_user_id=user_id,
                chat_id=chat.id,
                turn_id=turn.id,
                request_id=turn.request_id,
                now=now,
                trace_id=trace_id,
            )
            await tx.enqueue(constants.QUEUE_AUDIT, tenant_id, AuditEnvelope.wrap(audit))

    async def retry_turn(
        self,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        chat_id: uuid.UUID,
        request_id: uuid.UUID,
        *,
        trace_id: str | None = None,
    ) -> TurnStream:
        """Regenerate the latest terminal turn under a new server request_id (same user message)."""
        return await self._replace_turn(_Who(tenant_id, user_id, trace_id), chat_id, request_id, None)

    async def edit_turn(
        self,
        tenant_id: uuid.UUID,
        user_id: uuid.UUID,
        chat_id: uuid.UUID,
        request_id: uuid.UUID,
        body: EditTurnRequest,
        *,
        trace_id: str | None = None,
    ) -> TurnStream:
        """Replace the latest terminal turn's user message with `body.content` and generate again."""
        check_content(body.content)
        return await self._replace_turn(_Who(tenant_id, user_id, trace_id), chat_id, request_id, body.content)

    async def _mutable_turn(
        self, who: _Who, chat_id: uuid.UUID, request_id: uuid.UUID
    ) -> tuple[chats_repo.ChatRecord, turns.TurnRow]:
        """In-transaction checks, in order: chat 404, turn 404, requester 403, terminal 400, latest 409."""
        chat = await chats_repo.get_live(self._db, who.tenant_id, who.user_id, chat_id, for_update=True)
        if chat is None:
            raise ChatNotFound(f"Chat not found: {chat_id}")
        turn = await turns.find_by_request(self._db, chat.id, request_id)
        if turn is None or turn.deleted_at is not None:
            raise TurnNotFound(f"Turn not found: {request_id}")
        if turn.requester_user_id != who.user_id:
            raise TurnForbidden("The turn belongs to another requester")
        if not turn.is_terminal:
            raise InvalidTurnState("The turn is still running")
        latest = await turns.latest_live_turn(self._db, chat.id, for_update=True)
        if latest is None or latest.id != turn.id:
            raise NotLatestTurn("Only the latest turn of the chat can be changed")
        return chat, turn

    async def _replace_turn(
        self, who: _Who, chat_id: uuid.UUID, request_id: uuid.UUID, new_content: str | None
    ) -> TurnStream:
        now = self._clock()
        new_request_id = uuid.uuid4()
        new_turn_id = uuid.uuid4()
        try:
            async with self._outbox.transaction() as tx:
                chat, old = await self._mutable_turn(who, chat_id, request_id)
                old_message = await turns.user_message_of(self._db, chat.id, old.request_id)
                content = (
                    new_content if new_content is not None else (old_message.content if old_message else "")
                )
                links = (
                    await turns.message_attachments_of(self._db, chat.id, old_message.id)
                    if old_message
                    else []
                )
                await turns.soft_delete_turn(self._db, old, now=now, replaced_by=new_request_id)
                boundary = await self._boundary(chat.id)
                await turns.insert_turn(
                    self._db,
                    turn_id=new_turn_id,
                    tenant_id=who.tenant_id,
                    chat_id=chat.id,
                    request_id=new_request_id,
                    requester_user_id=who.user_id,
                    web_search_enabled=old.web_search_enabled,
                    now=now,
                    preflight=None,
                )
                message_id = uuid.uuid4()
                await turns.insert_user_message(
                    self._db,
                    message_id=message_id,
                    tenant_id=who.tenant_id,
                    chat_id=chat.id,
                    request_id=new_request_id,
                    content=content,
                    token_estimate=estimate_text_tokens(utf8_len(content), self._config.estimation_budgets),
                    now=now,
                )
                await turns.link_attachments(
                    self._db,
                    tenant_id=who.tenant_id,
                    chat_id=chat.id,
                    message_id=message_id,
                    attachment_ids=[a.id for a in links],
                    now=now,
                )
                audit = events.mutation_audit_event(
                    "turn_edit" if new_content is not None else "turn_retry",
                    tenant_id=who.tenant_id,
                    actor_user_id=who.user_id,
                    chat_id=chat.id,
                    old_turn_id=old.id,
                    original_request_id=old.request_id,
                    new_request_id=new_request_id,
                    now=now,
                    trace_id=who.trace_id,
                )
                await tx.enqueue(constants.QUEUE_AUDIT, who.tenant_id, AuditEnvelope.wrap(audit))
        except turns.TurnConflict:
            raise GenerationInProgress("Another generation is in progress in this chat") from None
        return await self._preflight_replacement(
            who,
            chat,
            new_turn_id,
            new_request_id,
            content,
            links,
            boundary,
            web_search=old.web_search_enabled,
        )

    async def _preflight_replacement(
        self,
        who: _Who,
        chat: chats_repo.ChatRecord,
        turn_id: uuid.UUID,
        request_id: uuid.UUID,
        content: str,
        links: Sequence[turns.AttachmentRow],
        boundary: turns.Boundary | None,
        *,
        web_search: bool,
    ) -> TurnStream:
        """Preflight a retry/edit turn after its commit: reserve + back-fill, or finalize it failed."""
        attached = tuple(links)
        policy: _Policy | None = None
        try:
            policy = await self._load_policy(who)
            if find_enabled(policy.snapshot, chat.model) is None:
                raise ChatModelUnavailable(f"The chat's model {chat.model!r} is not available")
            inputs = await self._load_tool_inputs(chat, content, web_search, attached)
            now = self._clock()
            periods = tuple(periods_for(now))
            lock = quota_ledger.user_lock_statement(self._db, who.tenant_id, who.user_id)
            async with self._outbox.transaction(first_statement=lock):
                usage = await quota_ledger.load_usage(
                    self._db, who.tenant_id, who.user_id, periods, for_update=True
                )
                prior = await turns.prior_context_tokens(self._db, chat.id)
                granted = self._preflight(chat.model, policy, inputs, usage, periods, prior)
                if not await turns.backfill_preflight(
                    self._db, turn_id, _preflight_columns(policy.version, granted), now
                ):
                    raise GenerationInProgress("The new turn is no longer running")
                await quota_ledger.apply_deltas(
                    self._db, who.tenant_id, who.user_id, reserve_writes(granted, periods), now=now
                )
        except Exception as exc:
            # The new turn is committed and running: end it now rather than leave it to the watchdog.
            await self._fail_unreserved(who, chat, turn_id, request_id, policy, attached, exc)
            raise
        assert policy is not None
        prepared = _Prepared(who, chat, turn_id, request_id, policy, granted, periods, inputs, boundary)
        return await self._launch(prepared)

    async def _fail_unreserved(
        self,
        who: _Who,
        chat: chats_repo.ChatRecord,
        turn_id: uuid.UUID,
        request_id: uuid.UUID,
        policy: _Policy | None,
        attached: tuple[turns.AttachmentRow, ...],
        exc: Exception,
    ) -> None:
        """Finalize a retry/edit turn whose preflight failed: nothing was reserved, nothing is settled."""
        selected = find_enabled(policy.snapshot, chat.model) if policy is not None else None
        model = selected or ModelCatalogEntry(
            id=chat.model, provider_model_id=chat.model, display_name=chat.model
        )
        ctx = TurnContext(
            facts=events.TurnFacts(
                tenant_id=who.tenant_id,
                user_id=who.user_id,
                chat_id=chat.id,
                turn_id=turn_id,
                request_id=request_id,
                selected_model=chat.model,
                effective_model=chat.model,
                policy_version_applied=policy.version if policy is not None else 0,
            ),
            assistant_message_id=uuid.uuid4(),
            model=model,
            reserve=None,
            periods=(),
            limits=None,
            quota_decision="allow",
            downgrade_from=None,
            downgrade_reason=None,
            attachments=tuple(_audit_attachment(a) for a in attached),
            trace_id=who.trace_id,
        )
        try:
            code, detail = (
                (exc.code, exc.detail) if isinstance(exc, DomainError) else ("internal_error", str(exc))
            )
            await self.finalizer.finalize(
                ctx, TurnOutcome(state="failed", error_code=code, error_detail=detail)
            )
        except Exception:
            log.exception("turn %s: finalizing after a failed preflight failed; the watchdog will", turn_id)

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- shutdown -------------------------------------------------------------------------------------
    @property
    def active_runs(self) -> int:
        return len(self._runs)

    async def wait_idle(self, seconds: float | None = None) -> bool:
        """Wait until every run of this process is finalized; False when `seconds` pass first."""
        pending = [run.finished for run in list(self._runs.values())]
        if not pending:
            return True
        _, not_done = await asyncio.wait(pending, timeout=seconds)
        return not not_done

    async def aclose(self, grace_seconds: float = _SHUTDOWN_GRACE_SECONDS) -> None:
        """Stop every live run (finalized `cancelled`, partial text kept) and wait for the finalizations."""
        self._closing = True
        for run in list(self._runs.values()):
            run.detach("shutdown")
        if not await self.wait_idle(grace_seconds):
            log.warning(
                "%d turn(s) still finalizing at shutdown; the orphan watchdog will settle them",
                len(self._runs),
            )
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_seconds)


def _preflight_columns(policy_version: int, granted: Granted) -> turns.Preflight:
    reserve = granted.reserve
    return turns.Preflight(
        reserve_tokens=reserve.reserve_tokens,
        max_output_tokens_applied=reserve.max_output_tokens_applied,
        reserved_credits_micro=reserve.reserved_credits_micro,
        policy_version_applied=policy_version,
        effective_model=granted.effective.id,
        minimal_generation_floor_applied=reserve.minimal_generation_floor_applied,
        quota_decision=granted.quota_decision,
        downgrade_from=granted.downgrade_from if isinstance(granted, Downgrade) else None,
        downgrade_reason=granted.reason if isinstance(granted, Downgrade) else None,
        provider_name=granted.effective.provider_id,
    )


def _audit_attachment(row: turns.AttachmentRow) -> AuditAttachment:
    return AuditAttachment(
        attachment_id=str(row.id),
        attachment_kind=row.attachment_kind,
        filename=row.filename,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        image_used_in_turn=row.attachment_kind == "image" or None,
        doc_summary=row.doc_summary,
    )


__all__ = [
    "EditTurnRequest",
    "ReplayStream",
    "SendMessageRequest",
    "TurnService",
    "TurnStatus",
    "TurnStream",
    "WebSearchOption",
]


class _RunHooks:
    """A run's callbacks into its service, bound to one turn: one small object per open stream instead of a
    closure (and its cells) per callback (bench/memory.py counts the bytes of every idle stream)."""

    __slots__ = ("_ctx", "_service", "_turn_id")

    def __init__(self, service: TurnService, ctx: TurnContext, turn_id: uuid.UUID) -> None:
        self._service = service
        self._ctx = ctx
        self._turn_id = turn_id

    def finalize(self, outcome: TurnOutcome) -> Awaitable[FinalizeResult | None]:
        return self._service.finalizer.finalize(self._ctx, outcome)

    # The pump is cancelled when the client leaves; its writes run in their own tasks so a cancellation
    # never lands inside a transaction (which would leave the pooled connection checked out).
    async def on_progress(self) -> None:
        await asyncio.shield(self._service._background(self._record_progress()))

    async def on_tool_done(self, tool: Literal["web_search", "code_interpreter", "file_search"]) -> None:
        await asyncio.shield(self._service._background(self._count_tool(tool)))

    def forget(self, _: object) -> None:
        self._service._runs.pop(self._turn_id, None)

    async def _record_progress(self) -> None:
        service, turn_id = self._service, self._turn_id
        try:
            await turns.touch_progress(service._db, turn_id, service._clock())
        except Exception:
            log.warning("turn %s: recording progress failed", turn_id, exc_info=True)

    async def _count_tool(self, tool: Literal["web_search", "code_interpreter", "file_search"]) -> None:
        service, turn_id = self._service, self._turn_id
        try:
            await turns.increment_tool_count(service._db, turn_id, tool, service._clock())
        except Exception:
            log.warning("turn %s: counting a %s call failed", turn_id, tool, exc_info=True)
