"""SQLAlchemy Core table definitions (the schema of original-domain.md §1).

Conventions: ids are `sa.Uuid` (PostgreSQL uuid, SQLite CHAR(32)); timestamps are `UtcDateTime`, always
timezone-aware UTC in Python whatever the engine; soft delete is `deleted_at`. Order everywhere is
`(created_at, id)`. Partial unique indexes carry both `postgresql_where` and `sqlite_where`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Final

import msgspec
import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

_to_builtins: Final = msgspec.to_builtins

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """TIMESTAMPTZ on PostgreSQL; naive-UTC text on SQLite; always aware UTC in Python."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
        # SQLite: one function for the chain above plus SQLAlchemy's DATETIME formatting (same text).
        return sqlite_utc_text if dialect.name == "sqlite" else super().bind_processor(dialect)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if value.tzinfo is None:
            naive: dt.datetime = value.replace(tzinfo=dt.UTC)
            return naive
        result: dt.datetime = value.astimezone(dt.UTC)
        return result


def sqlite_utc_text(value: dt.datetime | None) -> str | None:
    """What `UtcDateTime` stores on SQLite for `value`: naive UTC text, `YYYY-MM-DD HH:MM:SS.ffffff` as
    SQLAlchemy's DATETIME writes it (six digits always: the stored text is compared and ordered as text).

    A turn binds ~20 timestamps. `datetime.isoformat` builds its text through `PyUnicode_FromFormat`
    (~10 k instructions, ~1.1 µs); msgspec's encoder gives RFC 3339 (`YYYY-MM-DDTHH:MM:SS.ffffffZ` for an
    aware UTC value with microseconds) in ~0.2 µs, and the usual case is cut from that."""
    if value is None:
        return None
    if value.tzinfo is not dt.UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UtcDateTime column")
        value = value.astimezone(dt.UTC)
    text: str = _to_builtins(value)
    if len(text) == 27:  # a four-digit year, microseconds, the Z
        return f"{text[:10]} {text[11:26]}"
    return value.isoformat(" ", "microseconds")[:26]  # no microseconds (msgspec omits them), odd years


def _live(cond: str = "deleted_at IS NULL") -> dict[str, Any]:
    clause = sa.text(cond)
    return {"postgresql_where": clause, "sqlite_where": clause}


UUID = sa.Uuid
TS = UtcDateTime

chats = sa.Table(
    "chats",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("tenant_id", UUID, nullable=False),
    sa.Column("user_id", UUID, nullable=False),
    sa.Column("model", sa.String(1024), nullable=False),
    sa.Column("title", sa.String(255)),
    sa.Column("is_temporary", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("deleted_at", TS),
    # Visible messages (live, with a request id), kept by triggers on `messages` (migration 0003).
    sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_chats_owner_updated", "tenant_id", "user_id", "updated_at", "id", **_live()),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("tenant_id", UUID, nullable=False),
    sa.Column("chat_id", UUID, sa.ForeignKey("chats.id", ondelete="CASCADE"), nullable=False),
    sa.Column("request_id", UUID),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False, server_default=""),
    sa.Column("content_type", sa.String(32), nullable=False, server_default="text"),
    sa.Column("token_estimate", sa.Integer, nullable=False, server_default="0"),
    sa.Column("provider_response_id", sa.String(128)),
    sa.Column("request_kind", sa.String(16), nullable=False, server_default="chat"),
    sa.Column("features_used", sa.JSON, nullable=False, server_default="[]"),
    sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cache_read_input_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cache_write_input_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reasoning_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("model", sa.String(1024)),
    sa.Column("is_compressed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("deleted_at", TS),
    sa.CheckConstraint("role IN ('user','assistant','system')", name="role"),
    sa.UniqueConstraint("id", "chat_id", name="uq_messages_id_chat"),
    sa.Index(
        "uq_messages_live_request_role",
        "chat_id",
        "request_id",
        "role",
        unique=True,
        **_live("request_id IS NOT NULL AND deleted_at IS NULL"),
    ),
    sa.Index("ix_messages_chat_created", "chat_id", "created_at", "id", **_live()),
)

chat_turns = sa.Table(
    "chat_turns",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("tenant_id", UUID, nullable=False),
    sa.Column("chat_id", UUID, sa.ForeignKey("chats.id", ondelete="CASCADE"), nullable=False),
    sa.Column("request_id", UUID, nullable=False),
    sa.Column("requester_type", sa.String(16), nullable=False, server_default="user"),
    sa.Column("requester_user_id", UUID),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("provider_name", sa.String(128)),
    sa.Column("provider_response_id", sa.String(128)),
    sa.Column(
        "assistant_message_id", UUID, sa.ForeignKey("messages.id", ondelete="SET NULL", use_alter=True)
    ),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_detail", sa.Text),
    sa.Column("reserve_tokens", sa.BigInteger),
    sa.Column("max_output_tokens_applied", sa.Integer),
    sa.Column("reserved_credits_micro", sa.BigInteger),
    sa.Column("policy_version_applied", sa.BigInteger),
    sa.Column("effective_model", sa.String(1024)),
    sa.Column("minimal_generation_floor_applied", sa.Integer),
    sa.Column("quota_decision", sa.String(16)),
    sa.Column("downgrade_from", sa.String(1024)),
    sa.Column("downgrade_reason", sa.String(64)),
    sa.Column("web_search_enabled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("web_search_completed_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("code_interpreter_completed_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("file_search_completed_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deleted_at", TS),
    sa.Column("replaced_by_request_id", UUID),
    sa.Column("started_at", TS, nullable=False),
    sa.Column("last_progress_at", TS),
    sa.Column("completed_at", TS),
    sa.Column("updated_at", TS, nullable=False),
    sa.CheckConstraint("requester_type IN ('user','system')", name="requester_type"),
    sa.CheckConstraint("state IN ('running','completed','failed','cancelled')", name="state"),
    sa.UniqueConstraint("chat_id", "request_id", name="uq_chat_turns_chat_request"),
    sa.Index(
        "uq_chat_turns_one_running",
        "chat_id",
        unique=True,
        **_live("state = 'running' AND deleted_at IS NULL"),
    ),
    sa.Index("ix_chat_turns_chat_started", "chat_id", "started_at", **_live()),
    sa.Index(
        "ix_chat_turns_running_progress",
        "last_progress_at",
        **_live("state = 'running' AND deleted_at IS NULL"),
    ),
)

attachments = sa.Table(
    "attachments",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("tenant_id", UUID, nullable=False),
    sa.Column("chat_id", UUID, sa.ForeignKey("chats.id", ondelete="CASCADE"), nullable=False),
    sa.Column("uploaded_by_user_id", UUID, nullable=False),
    sa.Column("filename", sa.String(255), nullable=False),
    sa.Column("content_type", sa.String(128), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("storage_backend", sa.String(128), nullable=False, server_default="local"),
    sa.Column("provider_file_id", sa.String(256)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("attachment_kind", sa.String(16), nullable=False),
    sa.Column("doc_summary", sa.Text),
    sa.Column("img_thumbnail", sa.LargeBinary),
    sa.Column("img_thumbnail_width", sa.Integer),
    sa.Column("img_thumbnail_height", sa.Integer),
    sa.Column("summary_model", sa.String(1024)),
    sa.Column("summary_updated_at", TS),
    sa.Column("cleanup_status", sa.String(16)),
    sa.Column("cleanup_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_cleanup_error", sa.Text),
    sa.Column("cleanup_updated_at", TS),
    sa.Column("for_file_search", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("for_code_interpreter", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("deleted_at", TS),
    sa.CheckConstraint("status IN ('pending','uploaded','ready','failed')", name="status"),
    sa.CheckConstraint("attachment_kind IN ('document','image')", name="kind"),
    sa.CheckConstraint(
        "cleanup_status IS NULL OR cleanup_status IN ('pending','done','failed')", name="cleanup_status"
    ),
    sa.UniqueConstraint("id", "chat_id", name="uq_attachments_id_chat"),
    sa.Index("ix_attachments_tenant_chat", "tenant_id", "chat_id", **_live()),
    # Reads by chat alone (the turn's documents, upload limits, clean-up): see migration 0004.
    sa.Index("ix_attachments_chat_created", "chat_id", "created_at", "id"),
    sa.Index("ix_attachments_cleanup", "cleanup_status", **_live("cleanup_status IS NOT NULL")),
)

message_attachments = sa.Table(
    "message_attachments",
    metadata,
    sa.Column("tenant_id", UUID, nullable=False),
    sa.Column("chat_id", UUID, nullable=False),
    sa.Column("message_id", UUID, nullable=False),
    sa.Column("attachment_id", UUID, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.PrimaryKeyConstraint("chat_id", "message_id", "attachment_id"),
    sa.ForeignKeyConstraint(
        ["message_id", "chat_id"],
        ["messages.id", "messages.chat_id"],
        ondelete="CASCADE",
        name="fk_message_attachments_message",
    ),
    sa.ForeignKeyConstraint(
        ["attachment_id", "chat_id"],
        ["attachments.id", "attachments.chat_id"],
        ondelete="CASCADE",
        name="fk_message_attachments_attachment",
    ),
    sa.Index("ix_message_attachments_tenant_chat", "tenant_id", "chat_id"),
    sa.Index("ix_message_attachments_attachment", "attachment_id", "chat_id"),
)

thread_summaries = sa.Table(
    "thread_summaries",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("tenant_id", UUID, nullable=False),
    sa.Column("chat_id", UUID, sa.ForeignKey("chats.id", ondelete="CASCADE"), nullable=False, unique=True),
    sa.Column("summary_text", sa.Text, nullable=False),
    sa.Column("summarized_up_to_message_id", UUID, nullable=False),
    sa.Column("summarized_up_to_created_at", TS, nullable=False),
    sa.Column("token_estimate", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

chat_vector_stores = sa.Table(
    "chat_vector_stores",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("tenant_id", UUID, nullable=False),
    sa.Column("chat_id", UUID, sa.ForeignKey("chats.id", ondelete="CASCADE"), nullable=False),
    sa.Column("vector_store_id", sa.String(128)),
    sa.Column("provider", sa.String(128), nullable=False),
    sa.Column("file_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", TS, nullable=False),
    sa.UniqueConstraint("tenant_id", "chat_id", name="uq_chat_vector_stores_tenant_chat"),
    sa.Index("ix_chat_vector_stores_chat", "chat_id"),
)

quota_usage = sa.Table(
    "quota_usage",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("tenant_id", UUID, nullable=False),
    sa.Column("user_id", UUID, nullable=False),
    sa.Column("period_type", sa.String(16), nullable=False),
    sa.Column("period_start", sa.Date, nullable=False),
    sa.Column("bucket", sa.String(32), nullable=False),
    sa.Column("spent_credits_micro", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("reserved_credits_micro", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("input_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("output_tokens", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("file_search_calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("web_search_calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("code_interpreter_calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rag_retrieval_calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("image_inputs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("image_upload_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("updated_at", TS, nullable=False),
    sa.CheckConstraint("period_type IN ('daily','monthly')", name="period_type"),
    sa.CheckConstraint("reserved_credits_micro >= 0", name="reserved_nonneg"),
    sa.UniqueConstraint(
        "tenant_id", "user_id", "period_type", "period_start", "bucket", name="uq_quota_usage_key"
    ),
)

message_reactions = sa.Table(
    "message_reactions",
    metadata,
    sa.Column("id", UUID, primary_key=True),
    sa.Column("tenant_id", UUID, nullable=False),
    sa.Column("message_id", UUID, sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
    sa.Column("user_id", UUID, nullable=False),
    sa.Column("reaction", sa.String(16), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.CheckConstraint("reaction IN ('like','dislike')", name="reaction"),
    sa.UniqueConstraint("message_id", "user_id", name="uq_message_reactions_message_user"),
)

DOMAIN_TABLES = (
    chats,
    messages,
    chat_turns,
    attachments,
    message_attachments,
    thread_summaries,
    chat_vector_stores,
    quota_usage,
    message_reactions,
)
