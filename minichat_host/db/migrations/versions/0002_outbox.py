"""Outbox tables: bodies, partitions, incoming, outgoing, processor (cursor + lease), dead letters, vacuum.

Revision ID: 0002_outbox
Revises: 0001_domain
Create Date: 2026-11-23

Frozen copy of minichat_host/outbox/tables.py as of this revision. `UtcDateTime` is
`DateTime(timezone=True)` in the database; ids that SQLite must auto-assign are INTEGER there (rowid).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_outbox"
down_revision: str | Sequence[str] | None = "0001_domain"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbox_body",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_type", sa.String(length=1024), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_body")),
    )
    op.create_table(
        "outbox_partitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("queue", sa.String(length=1024), nullable=False),
        sa.Column("partition", sa.SmallInteger(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_partitions")),
        sa.UniqueConstraint("queue", "partition", name=op.f("uq_outbox_partitions_queue_partition")),
    )
    op.create_table(
        "outbox_incoming",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("partition_id", sa.Integer(), nullable=False),
        sa.Column("body_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["body_id"], ["outbox_body.id"], name=op.f("fk_outbox_incoming_body_id_outbox_body")
        ),
        sa.ForeignKeyConstraint(
            ["partition_id"],
            ["outbox_partitions.id"],
            name=op.f("fk_outbox_incoming_partition_id_outbox_partitions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_incoming")),
    )
    op.create_index("ix_outbox_incoming_body_id", "outbox_incoming", ["body_id"])
    op.create_index("ix_outbox_incoming_partition_id_id", "outbox_incoming", ["partition_id", "id"])
    op.create_table(
        "outbox_outgoing",
        sa.Column("partition_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("body_id", sa.BigInteger(), nullable=False),
        sa.Column("sequenced_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["body_id"], ["outbox_body.id"], name=op.f("fk_outbox_outgoing_body_id_outbox_body")
        ),
        sa.ForeignKeyConstraint(
            ["partition_id"],
            ["outbox_partitions.id"],
            name=op.f("fk_outbox_outgoing_partition_id_outbox_partitions"),
        ),
        sa.PrimaryKeyConstraint("partition_id", "seq", name=op.f("pk_outbox_outgoing")),
    )
    op.create_index("ix_outbox_outgoing_body_id", "outbox_outgoing", ["body_id"])
    op.create_table(
        "outbox_processor",
        sa.Column("partition_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("processed_seq", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("locked_by", sa.String(length=128), nullable=True),
        sa.Column("locked_until", _TS, nullable=True),
        sa.Column("retry_at", _TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["partition_id"],
            ["outbox_partitions.id"],
            name=op.f("fk_outbox_processor_partition_id_outbox_partitions"),
        ),
        sa.PrimaryKeyConstraint("partition_id", name=op.f("pk_outbox_processor")),
    )
    op.create_table(
        "outbox_dead_letters",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("partition_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_type", sa.String(length=1024), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("failed_at", _TS, nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("completed_at", _TS, nullable=True),
        sa.Column("deadline", _TS, nullable=True),
        sa.CheckConstraint(
            "status IN ('pending','reprocessing','resolved','discarded')",
            name=op.f("ck_outbox_dead_letters_status"),
        ),
        sa.ForeignKeyConstraint(
            ["partition_id"],
            ["outbox_partitions.id"],
            name=op.f("fk_outbox_dead_letters_partition_id_outbox_partitions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_dead_letters")),
    )
    op.create_index("ix_outbox_dead_letters_partition_id", "outbox_dead_letters", ["partition_id"])
    op.create_index("ix_outbox_dead_letters_status_deadline", "outbox_dead_letters", ["status", "deadline"])
    op.create_index("ix_outbox_dead_letters_status_failed_at", "outbox_dead_letters", ["status", "failed_at"])
    op.create_table(
        "outbox_vacuum_counter",
        sa.Column("partition_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("counter", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["partition_id"],
            ["outbox_partitions.id"],
            name=op.f("fk_outbox_vacuum_counter_partition_id_outbox_partitions"),
        ),
        sa.PrimaryKeyConstraint("partition_id", name=op.f("pk_outbox_vacuum_counter")),
    )


def downgrade() -> None:
    op.drop_table("outbox_vacuum_counter")
    op.drop_index("ix_outbox_dead_letters_status_failed_at", table_name="outbox_dead_letters")
    op.drop_index("ix_outbox_dead_letters_status_deadline", table_name="outbox_dead_letters")
    op.drop_index("ix_outbox_dead_letters_partition_id", table_name="outbox_dead_letters")
    op.drop_table("outbox_dead_letters")
    op.drop_table("outbox_processor")
    op.drop_index("ix_outbox_outgoing_body_id", table_name="outbox_outgoing")
    op.drop_table("outbox_outgoing")
    op.drop_index("ix_outbox_incoming_partition_id_id", table_name="outbox_incoming")
    op.drop_index("ix_outbox_incoming_body_id", table_name="outbox_incoming")
    op.drop_table("outbox_incoming")
    op.drop_table("outbox_partitions")
    op.drop_table("outbox_body")
