"""Chat message count: `chats.message_count`, kept by triggers on `messages`.

Revision ID: 0003_chat_message_count
Revises: 0002_outbox
Create Date: 2026-12-03

The chat list shows every chat's visible message count (not deleted, with a request id). Counting them
per listed chat was half of the list query's time and most of its page-cache footprint (the messages
index); the count now lives on the chat row. Triggers keep it, so that every writer — the turn services,
the CLI, a test or bench inserting rows directly — agrees with a recount, in the writer's transaction.
The upgrade backfills the count of existing chats.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_chat_message_count"
down_revision: str | Sequence[str] | None = "0002_outbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VISIBLE_NEW = "NEW.request_id IS NOT NULL AND NEW.deleted_at IS NULL"
_VISIBLE_OLD = "OLD.request_id IS NOT NULL AND OLD.deleted_at IS NULL"

_SQLITE_TRIGGERS = (
    f"""
    CREATE TRIGGER trg_messages_count_insert AFTER INSERT ON messages
    WHEN {_VISIBLE_NEW}
    BEGIN
        UPDATE chats SET message_count = message_count + 1 WHERE id = NEW.chat_id;
    END
    """,
    f"""
    CREATE TRIGGER trg_messages_count_delete AFTER DELETE ON messages
    WHEN {_VISIBLE_OLD}
    BEGIN
        UPDATE chats SET message_count = message_count - 1 WHERE id = OLD.chat_id;
    END
    """,
    # Only updates that change the visibility (or move a visible message) touch the chat row.
    f"""
    CREATE TRIGGER trg_messages_count_update AFTER UPDATE OF chat_id, request_id, deleted_at ON messages
    WHEN ({_VISIBLE_OLD}) IS NOT ({_VISIBLE_NEW}) OR (OLD.chat_id IS NOT NEW.chat_id AND {_VISIBLE_NEW})
    BEGIN
        UPDATE chats SET message_count = message_count - 1 WHERE id = OLD.chat_id AND {_VISIBLE_OLD};
        UPDATE chats SET message_count = message_count + 1 WHERE id = NEW.chat_id AND {_VISIBLE_NEW};
    END
    """,
)
_SQLITE_TRIGGER_NAMES = (
    "trg_messages_count_insert",
    "trg_messages_count_delete",
    "trg_messages_count_update",
)

# OLD is not set on INSERT nor NEW on DELETE: each is read only under its own TG_OP test.
_POSTGRESQL_FUNCTION = f"""
CREATE FUNCTION minichat_messages_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_visible boolean := false;
    new_visible boolean := false;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_visible := {_VISIBLE_OLD};
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_visible := {_VISIBLE_NEW};
    END IF;
    IF TG_OP = 'UPDATE' AND old_visible = new_visible AND OLD.chat_id = NEW.chat_id THEN
        RETURN NULL;
    END IF;
    IF old_visible THEN
        UPDATE chats SET message_count = message_count - 1 WHERE id = OLD.chat_id;
    END IF;
    IF new_visible THEN
        UPDATE chats SET message_count = message_count + 1 WHERE id = NEW.chat_id;
    END IF;
    RETURN NULL;
END
$$
"""
_POSTGRESQL_TRIGGER = """
CREATE TRIGGER trg_messages_count
AFTER INSERT OR DELETE OR UPDATE OF chat_id, request_id, deleted_at ON messages
FOR EACH ROW EXECUTE FUNCTION minichat_messages_count()
"""

_BACKFILL = """
UPDATE chats SET message_count = (
    SELECT count(*) FROM messages
    WHERE messages.chat_id = chats.id AND messages.request_id IS NOT NULL AND messages.deleted_at IS NULL
)
"""


def upgrade() -> None:
    op.add_column("chats", sa.Column("message_count", sa.Integer(), server_default="0", nullable=False))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_POSTGRESQL_FUNCTION)
        op.execute(_POSTGRESQL_TRIGGER)
    else:
        for trigger in _SQLITE_TRIGGERS:
            op.execute(trigger)
    # In the migration's transaction with the triggers (PostgreSQL: the new column's lock holds off writers).
    op.execute(_BACKFILL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER trg_messages_count ON messages")
        op.execute("DROP FUNCTION minichat_messages_count()")
    else:
        for name in _SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_column("chats", "message_count")
