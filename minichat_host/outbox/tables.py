"""Outbox tables (original-outbox-and-plugins.md §1.1) on the shared `metadata`.

Pipeline: enqueue writes `outbox_body` + `outbox_incoming` inside the caller's transaction; the sequencer
moves incoming rows to `outbox_outgoing` with contiguous per-partition `seq` numbers; the processor
delivers `seq > processed_seq` under the lease kept in `outbox_processor`; vacuum deletes acknowledged
outgoing rows and their bodies. Differences from the original, on purpose:
- `outbox_outgoing` is keyed by `(partition_id, seq)` (no surrogate id: one index fewer per message);
- `outbox_processor.retry_at` keeps the retry backoff in the database, so every replica honours it;
- timestamps are `UtcDateTime` written from the application clock (see scheduler.py for why).
"""

from __future__ import annotations

import sqlalchemy as sa

from minichat_host.db.tables import UtcDateTime, metadata

# SQLite only auto-assigns INTEGER PRIMARY KEY (rowid) columns; BIGINT elsewhere.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

DEAD_LETTER_STATUSES = ("pending", "reprocessing", "resolved", "discarded")

outbox_body = sa.Table(
    "outbox_body",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("payload_type", sa.String(1024), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

outbox_partitions = sa.Table(
    "outbox_partitions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("queue", sa.String(1024), nullable=False),
    sa.Column("partition", sa.SmallInteger, nullable=False),
    # Last sequence number handed out in this partition (0 = none yet).
    sa.Column("sequence", sa.BigInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("queue", "partition"),
)

outbox_incoming = sa.Table(
    "outbox_incoming",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "partition_id",
        sa.Integer,
        sa.ForeignKey("outbox_partitions.id"),
        nullable=False,
    ),
    sa.Column(
        "body_id",
        sa.BigInteger,
        sa.ForeignKey("outbox_body.id"),
        nullable=False,
    ),
    sa.Index("ix_outbox_incoming_partition_id_id", "partition_id", "id"),
    sa.Index("ix_outbox_incoming_body_id", "body_id"),
)

outbox_outgoing = sa.Table(
    "outbox_outgoing",
    metadata,
    sa.Column(
        "partition_id",
        sa.Integer,
        sa.ForeignKey("outbox_partitions.id"),
        nullable=False,
    ),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column(
        "body_id",
        sa.BigInteger,
        sa.ForeignKey("outbox_body.id"),
        nullable=False,
    ),
    sa.Column("sequenced_at", UtcDateTime, nullable=False),
    sa.PrimaryKeyConstraint("partition_id", "seq"),
    sa.Index("ix_outbox_outgoing_body_id", "body_id"),
)

outbox_processor = sa.Table(
    "outbox_processor",
    metadata,
    sa.Column(
        "partition_id",
        sa.Integer,
        sa.ForeignKey("outbox_partitions.id"),
        primary_key=True,
        autoincrement=False,
    ),
    # Cursor: every seq <= processed_seq is acknowledged (delivered or dead-lettered).
    sa.Column("processed_seq", sa.BigInteger, nullable=False, server_default="0"),
    # Deliveries of the head message (processed_seq + 1) that started and did not complete.
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("locked_by", sa.String(128)),
    sa.Column("locked_until", UtcDateTime),
    # Backoff after a retry: no worker of any replica takes the lease before this.
    sa.Column("retry_at", UtcDateTime),
)

outbox_dead_letters = sa.Table(
    "outbox_dead_letters",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "partition_id",
        sa.Integer,
        sa.ForeignKey("outbox_partitions.id"),
        nullable=False,
    ),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("payload_type", sa.String(1024), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("failed_at", UtcDateTime, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("completed_at", UtcDateTime),
    sa.Column("deadline", UtcDateTime),
    sa.CheckConstraint("status IN ('pending','reprocessing','resolved','discarded')", name="status"),
    sa.Index("ix_outbox_dead_letters_status_deadline", "status", "deadline"),
    sa.Index("ix_outbox_dead_letters_status_failed_at", "status", "failed_at"),
    sa.Index("ix_outbox_dead_letters_partition_id", "partition_id"),
)

outbox_vacuum_counter = sa.Table(
    "outbox_vacuum_counter",
    metadata,
    sa.Column(
        "partition_id",
        sa.Integer,
        sa.ForeignKey("outbox_partitions.id"),
        primary_key=True,
        autoincrement=False,
    ),
    # Bumped by every ack that moves the cursor; vacuum skips partitions at 0.
    sa.Column("counter", sa.BigInteger, nullable=False, server_default="0"),
)

OUTBOX_TABLES = (
    outbox_body,
    outbox_partitions,
    outbox_incoming,
    outbox_outgoing,
    outbox_processor,
    outbox_dead_letters,
    outbox_vacuum_counter,
)
