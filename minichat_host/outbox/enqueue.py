"""Enqueue inside the caller's transaction, and the stable key → partition hash.

Partitioning (stable across processes, versions and Python's hash seed):
- a `uuid.UUID`, or a `str` that parses as a UUID, maps to `uuid.int % partitions` (as the original);
- any other `str` maps to `int.from_bytes(blake2b(key_utf8, digest_size=8).digest(), "big") % partitions`;
- an `int` maps to `key % partitions`.
Partition counts are powers of two up to 64, so `hash % 64 % n == hash % n`: the database only ever sees
`hash % 64`, and the partition row is chosen in SQL from the queue's registered partition count. Enqueue
therefore needs no scheduler object and works from any process that shares the database. On PostgreSQL an
enqueue is one statement; on SQLite three (the partition lookup, the body, the incoming row).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import databases
import msgspec

from minichat_host import constants
from minichat_host.outbox import sql
from minichat_host.outbox.errors import (
    InvalidPartitionCount,
    InvalidPayloadType,
    InvalidQueueName,
    PayloadTooLarge,
    QueueNotRegistered,
)
from minichat_host.outbox.models import Enqueued
from minichat_host.outbox.sql import Sql

MAX_PARTITIONS: Final = 64
DEFAULT_MAX_PAYLOAD_BYTES: Final = 65536
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,1022}[A-Za-z0-9])?$")
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]{1,1024}$")

PartitionKey = uuid.UUID | str | int
Payload = msgspec.Struct | bytes | Mapping[str, Any]
Clock = Callable[[], dt.datetime]
DatabaseOrConnection = databases.Database | databases.core.Connection


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def validate_queue_name(name: str) -> str:
    if not _QUEUE_NAME.match(name):
        raise InvalidQueueName(
            f"invalid queue name {name!r}: use 1-1024 characters of [A-Za-z0-9._-], "
            "starting and ending with a letter or digit"
        )
    return name


def validate_partitions(partitions: int) -> int:
    if not 1 <= partitions <= MAX_PARTITIONS or partitions & (partitions - 1):
        raise InvalidPartitionCount(f"partitions must be a power of two from 1 to 64, got {partitions}")
    return partitions


def validate_payload_type(payload_type: str) -> str:
    if not _PRINTABLE_ASCII.match(payload_type):
        raise InvalidPayloadType(
            f"payload type must be 1-1024 printable ASCII characters, got {payload_type!r}"
        )
    return payload_type


def key_hash(key: PartitionKey) -> int:
    """The stable non-negative hash of a partition key (see the module docstring)."""
    if isinstance(key, uuid.UUID):
        return key.int
    if isinstance(key, bool):
        raise TypeError("a partition key must be a UUID, str or int, not bool")
    if isinstance(key, int):
        if key < 0:
            raise ValueError("an int partition key must not be negative")
        return key
    if isinstance(key, str):
        try:
            return uuid.UUID(key).int
        except ValueError:
            return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
    raise TypeError(f"a partition key must be a UUID, str or int, not {type(key).__name__}")


def partition_for(key: PartitionKey, partitions: int) -> int:
    """The partition index of `key` in a queue with `partitions` partitions."""
    return key_hash(key) % validate_partitions(partitions)


_BYTES_TYPES: Final = (bytes, bytearray, memoryview)  # a tuple: a union is built anew on every check


def encode_payload(payload: Payload) -> bytes:
    """bytes as they are; a msgspec Struct or a mapping as JSON."""
    if isinstance(payload, _BYTES_TYPES):
        return bytes(payload)
    return msgspec.json.encode(payload)


def _dialect_of(db: DatabaseOrConnection) -> sql.DialectName:
    database: databases.Database = db if isinstance(db, databases.Database) else db._database
    return "postgresql" if database.url.dialect in ("postgresql", "postgres") else "sqlite"


_ENQUEUE_POSTGRESQL = Sql(
    """
    WITH target AS (
        SELECT id, partition FROM outbox_partitions
        WHERE queue = $1
          AND partition = $2 % NULLIF((SELECT count(*) FROM outbox_partitions WHERE queue = $1), 0)
    ),
    body AS (
        INSERT INTO outbox_body (payload, payload_type, created_at) SELECT $3, $4, $5 FROM target RETURNING id
    ),
    incoming AS (
        INSERT INTO outbox_incoming (partition_id, body_id) SELECT target.id, body.id FROM target, body
    )
    SELECT id, partition FROM target
    """
)
_FIND_PARTITION = Sql(
    """
    SELECT id, partition FROM outbox_partitions
    WHERE queue = $1 AND partition = $2 % NULLIF((SELECT count(*) FROM outbox_partitions WHERE queue = $1), 0)
    """
)
# SQLite only (PostgreSQL enqueues with the one statement above): the incoming row points at the body the
# statement before inserted on the same connection, so the two run back to back without a trip through
# Python for the body's id.
_INSERT_BODY = Sql("INSERT INTO outbox_body (payload, payload_type, created_at) VALUES ($1, $2, $3)")
_INSERT_INCOMING = Sql("INSERT INTO outbox_incoming (partition_id, body_id) VALUES ($1, last_insert_rowid())")


async def enqueue(
    db: DatabaseOrConnection,
    queue: str,
    key: PartitionKey,
    payload: Payload,
    *,
    payload_type: str = constants.PAYLOAD_TYPE_JSON,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    clock: Clock = utc_now,
    partition_ids: Mapping[int, int] | None = None,
) -> Enqueued:
    """Write one message in the caller's open transaction (body + incoming rows).

    Nothing is visible to the scheduler until the caller commits; a rollback leaves no row. After the
    commit, call `Outbox.notify(result.queue, result.partition)` (or use `Outbox.transaction()`, which
    does it for you); without a wake-up the message is still found by the reconciler.

    `partition_ids` (partition index → id of this queue, as `ensure_partitions` returned them) spares
    SQLite the statement that looks the partition up; a queue's partitions never change once created.
    """
    data = encode_payload(payload)
    if len(data) > max_payload_bytes:
        raise PayloadTooLarge(
            f"payload of {len(data)} bytes for queue {queue!r} exceeds the limit of "
            f"{max_payload_bytes} bytes (outbox.max_payload_bytes)"
        )
    validate_payload_type(payload_type)
    hash64 = key_hash(key) % MAX_PARTITIONS
    dialect = _dialect_of(db)
    database: databases.Database = db if isinstance(db, databases.Database) else db._database
    created_at = sql.timestamp(dialect, clock())
    if dialect == "postgresql":
        # One round trip: find the partition, insert the body and the incoming row (data-modifying CTEs).
        row = await sql.fetch_one(
            database, dialect, _ENQUEUE_POSTGRESQL, queue, hash64, data, payload_type, created_at
        )
    else:
        if partition_ids:
            index = hash64 % len(partition_ids)
            row = (partition_ids[index], index)
        else:
            row = await sql.fetch_one(database, dialect, _FIND_PARTITION, queue, hash64)
        if row is not None:
            await sql.execute_each(
                database,
                dialect,
                (_INSERT_BODY, (data, payload_type, created_at)),
                (_INSERT_INCOMING, (row[0],)),
            )
    if row is None:
        raise QueueNotRegistered(f"queue {queue!r} has no partitions in the database (not registered)")
    return Enqueued(queue=queue, partition=int(row[1]), partition_id=int(row[0]))
