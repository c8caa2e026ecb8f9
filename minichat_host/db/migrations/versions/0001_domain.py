"""Domain tables: chats, messages, turns, attachments, summaries, vector stores, quota usage, reactions.

Revision ID: 0001_domain
Revises:
Create Date: 2026-11-22

Frozen copy of minichat_host/db/tables.py as of this revision: later changes to tables.py need a new revision
(tests/db/test_migrations.py fails on drift). `UtcDateTime` is `DateTime(timezone=True)` in the database.
Partial indexes carry the same WHERE for PostgreSQL and SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_domain"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chats",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("model", sa.String(length=1024), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=True),
        sa.Column("is_temporary", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chats")),
    )
    op.create_index(
        "ix_chats_owner_updated",
        "chats",
        ["tenant_id", "user_id", "updated_at", "id"],
        unique=False,
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    )

    op.create_table(
        "messages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("chat_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=True),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.Text(), server_default="", nullable=False),
        sa.Column("content_type", sa.String(length=32), server_default="text", nullable=False),
        sa.Column("token_estimate", sa.Integer(), server_default="0", nullable=False),
        sa.Column("provider_response_id", sa.String(length=128), nullable=True),
        sa.Column("request_kind", sa.String(length=16), server_default="chat", nullable=False),
        sa.Column("features_used", sa.JSON(), server_default="[]", nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_read_input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cache_write_input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("model", sa.String(length=1024), nullable=True),
        sa.Column("is_compressed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('user','assistant','system')", name=op.f("ck_messages_role")),
        sa.ForeignKeyConstraint(
            ["chat_id"], ["chats.id"], name=op.f("fk_messages_chat_id_chats"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("id", "chat_id", name="uq_messages_id_chat"),
    )
    # One live user message and one live assistant message per (chat, request).
    op.create_index(
        "uq_messages_live_request_role",
        "messages",
        ["chat_id", "request_id", "role"],
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL AND deleted_at IS NULL"),
        sqlite_where=sa.text("request_id IS NOT NULL AND deleted_at IS NULL"),
    )
    op.create_index(
        "ix_messages_chat_created",
        "messages",
        ["chat_id", "created_at", "id"],
        unique=False,
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    )

    # Created after messages, so the assistant_message_id foreign key can be declared inline on both engines.
    op.create_table(
        "chat_turns",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("chat_id", sa.Uuid(), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("requester_type", sa.String(length=16), server_default="user", nullable=False),
        sa.Column("requester_user_id", sa.Uuid(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("provider_name", sa.String(length=128), nullable=True),
        sa.Column("provider_response_id", sa.String(length=128), nullable=True),
        sa.Column("assistant_message_id", sa.Uuid(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("reserve_tokens", sa.BigInteger(), nullable=True),
        sa.Column("max_output_tokens_applied", sa.Integer(), nullable=True),
        sa.Column("reserved_credits_micro", sa.BigInteger(), nullable=True),
        sa.Column("policy_version_applied", sa.BigInteger(), nullable=True),
        sa.Column("effective_model", sa.String(length=1024), nullable=True),
        sa.Column("minimal_generation_floor_applied", sa.Integer(), nullable=True),
        sa.Column("quota_decision", sa.String(length=16), nullable=True),
        sa.Column("downgrade_from", sa.String(length=1024), nullable=True),
        sa.Column("downgrade_reason", sa.String(length=64), nullable=True),
        sa.Column("web_search_enabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("web_search_completed_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("code_interpreter_completed_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("file_search_completed_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaced_by_request_id", sa.Uuid(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_progress_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("requester_type IN ('user','system')", name=op.f("ck_chat_turns_requester_type")),
        sa.CheckConstraint(
            "state IN ('running','completed','failed','cancelled')", name=op.f("ck_chat_turns_state")
        ),
        sa.ForeignKeyConstraint(
            ["assistant_message_id"],
            ["messages.id"],
            name=op.f("fk_chat_turns_assistant_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["chat_id"], ["chats.id"], name=op.f("fk_chat_turns_chat_id_chats"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_turns")),
        sa.UniqueConstraint("chat_id", "request_id", name="uq_chat_turns_chat_request"),
    )
    # One running turn per chat.
    op.create_index(
        "uq_chat_turns_one_running",
        "chat_turns",
        ["chat_id"],
        unique=True,
        postgresql_where=sa.text("state = 'running' AND deleted_at IS NULL"),
        sqlite_where=sa.text("state = 'running' AND deleted_at IS NULL"),
    )
    op.create_index(
        "ix_chat_turns_chat_started",
        "chat_turns",
        ["chat_id", "started_at"],
        unique=False,
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index(
        "ix_chat_turns_running_progress",
        "chat_turns",
        ["last_progress_at"],
        unique=False,
        postgresql_where=sa.text("state = 'running' AND deleted_at IS NULL"),
        sqlite_where=sa.text("state = 'running' AND deleted_at IS NULL"),
    )

    op.create_table(
        "attachments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("chat_id", sa.Uuid(), nullable=False),
        sa.Column("uploaded_by_user_id", sa.Uuid(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=128), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("storage_backend", sa.String(length=128), server_default="local", nullable=False),
        sa.Column("provider_file_id", sa.String(length=256), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("attachment_kind", sa.String(length=16), nullable=False),
        sa.Column("doc_summary", sa.Text(), nullable=True),
        sa.Column("img_thumbnail", sa.LargeBinary(), nullable=True),
        sa.Column("img_thumbnail_width", sa.Integer(), nullable=True),
        sa.Column("img_thumbnail_height", sa.Integer(), nullable=True),
        sa.Column("summary_model", sa.String(length=1024), nullable=True),
        sa.Column("summary_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cleanup_status", sa.String(length=16), nullable=True),
        sa.Column("cleanup_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_cleanup_error", sa.Text(), nullable=True),
        sa.Column("cleanup_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("for_file_search", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("for_code_interpreter", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending','uploaded','ready','failed')", name=op.f("ck_attachments_status")
        ),
        sa.CheckConstraint("attachment_kind IN ('document','image')", name=op.f("ck_attachments_kind")),
        sa.CheckConstraint(
            "cleanup_status IS NULL OR cleanup_status IN ('pending','done','failed')",
            name=op.f("ck_attachments_cleanup_status"),
        ),
        sa.ForeignKeyConstraint(
            ["chat_id"], ["chats.id"], name=op.f("fk_attachments_chat_id_chats"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attachments")),
        sa.UniqueConstraint("id", "chat_id", name="uq_attachments_id_chat"),
    )
    op.create_index(
        "ix_attachments_tenant_chat",
        "attachments",
        ["tenant_id", "chat_id"],
        unique=False,
        postgresql_where=sa.text("deleted_at IS NULL"),
        sqlite_where=sa.text("deleted_at IS NULL"),
    )
    op.create_index(
        "ix_attachments_cleanup",
        "attachments",
        ["cleanup_status"],
        unique=False,
        postgresql_where=sa.text("cleanup_status IS NOT NULL"),
        sqlite_where=sa.text("cleanup_status IS NOT NULL"),
    )

    op.create_table(
        "message_attachments",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("chat_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("attachment_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id", "chat_id"],
            ["messages.id", "messages.chat_id"],
            name="fk_message_attachments_message",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["attachment_id", "chat_id"],
            ["attachments.id", "attachments.chat_id"],
            name="fk_message_attachments_attachment",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "chat_id", "message_id", "attachment_id", name=op.f("pk_message_attachments")
        ),
    )
    op.create_index(
        "ix_message_attachments_tenant_chat", "message_attachments", ["tenant_id", "chat_id"], unique=False
    )
    op.create_index(
        "ix_message_attachments_attachment", "message_attachments", ["attachment_id", "chat_id"], unique=False
    )

    op.create_table(
        "thread_summaries",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("chat_id", sa.Uuid(), nullable=False),
        sa.Column("summary_text", sa.Text(), nullable=False),
        sa.Column("summarized_up_to_message_id", sa.Uuid(), nullable=False),
        sa.Column("summarized_up_to_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("token_estimate", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["chat_id"], ["chats.id"], name=op.f("fk_thread_summaries_chat_id_chats"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_thread_summaries")),
        sa.UniqueConstraint("chat_id", name=op.f("uq_thread_summaries_chat_id")),
    )

    op.create_table(
        "chat_vector_stores",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("chat_id", sa.Uuid(), nullable=False),
        sa.Column("vector_store_id", sa.String(length=128), nullable=True),
        sa.Column("provider", sa.String(length=128), nullable=False),
        sa.Column("file_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["chat_id"], ["chats.id"], name=op.f("fk_chat_vector_stores_chat_id_chats"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chat_vector_stores")),
        sa.UniqueConstraint("tenant_id", "chat_id", name="uq_chat_vector_stores_tenant_chat"),
    )

    op.create_table(
        "quota_usage",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("period_type", sa.String(length=16), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("bucket", sa.String(length=32), nullable=False),
        sa.Column("spent_credits_micro", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("reserved_credits_micro", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("file_search_calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("web_search_calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("code_interpreter_calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rag_retrieval_calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("image_inputs", sa.Integer(), server_default="0", nullable=False),
        sa.Column("image_upload_bytes", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("period_type IN ('daily','monthly')", name=op.f("ck_quota_usage_period_type")),
        sa.CheckConstraint("reserved_credits_micro >= 0", name=op.f("ck_quota_usage_reserved_nonneg")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quota_usage")),
        sa.UniqueConstraint(
            "tenant_id", "user_id", "period_type", "period_start", "bucket", name="uq_quota_usage_key"
        ),
    )

    op.create_table(
        "message_reactions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("reaction", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("reaction IN ('like','dislike')", name=op.f("ck_message_reactions_reaction")),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_message_reactions_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_reactions")),
        sa.UniqueConstraint("message_id", "user_id", name="uq_message_reactions_message_user"),
    )


def downgrade() -> None:
    op.drop_table("message_reactions")
    op.drop_table("quota_usage")
    op.drop_table("chat_vector_stores")
    op.drop_table("thread_summaries")
    op.drop_index("ix_message_attachments_attachment", table_name="message_attachments")
    op.drop_index("ix_message_attachments_tenant_chat", table_name="message_attachments")
    op.drop_table("message_attachments")
    op.drop_index("ix_attachments_cleanup", table_name="attachments")
    op.drop_index("ix_attachments_tenant_chat", table_name="attachments")
    op.drop_table("attachments")
    op.drop_index("ix_chat_turns_running_progress", table_name="chat_turns")
    op.drop_index("ix_chat_turns_chat_started", table_name="chat_turns")
    op.drop_index("uq_chat_turns_one_running", table_name="chat_turns")
    op.drop_table("chat_turns")
    op.drop_index("ix_messages_chat_created", table_name="messages")
    op.drop_index("uq_messages_live_request_role", table_name="messages")
    op.drop_table("messages")
    op.drop_index("ix_chats_owner_updated", table_name="chats")
    op.drop_table("chats")
