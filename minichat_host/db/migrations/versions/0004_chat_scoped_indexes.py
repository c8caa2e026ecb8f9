"""Chat-scoped indexes: `attachments (chat_id, created_at, id)` and `chat_vector_stores (chat_id)`.

The turn start reads a chat's ready documents, the upload limits count a chat's attachments, chat deletion
marks them for clean-up and looks up the chat's vector store, all by chat id alone. The only chat index
of either table led with `tenant_id` (and on attachments covered live rows only), so each of these
queries read the index of every tenant's attachments (SQLite: `SCAN attachments USING INDEX`), a cost
that grew with the whole deployment instead of the chat. The new attachments index also gives the
documents their order (created_at, id) without a sort.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_chat_scoped_indexes"
down_revision: str | Sequence[str] | None = "0003_chat_message_count"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_attachments_chat_created", "attachments", ["chat_id", "created_at", "id"])
    op.create_index("ix_chat_vector_stores_chat", "chat_vector_stores", ["chat_id"])


def downgrade() -> None:
    op.drop_index("ix_chat_vector_stores_chat", table_name="chat_vector_stores")
    op.drop_index("ix_attachments_chat_created", table_name="attachments")
