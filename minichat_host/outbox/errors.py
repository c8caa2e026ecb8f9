"""Errors of the outbox library (handlers raise TransientError / PermanentError from plugins.errors)."""

from __future__ import annotations


class OutboxError(Exception):
    """Base of every error the outbox raises on purpose."""


class InvalidQueueName(OutboxError, ValueError):
    """A queue name outside `[A-Za-z0-9._-]{1,1024}` with an alphanumeric first and last character."""


class InvalidPartitionCount(OutboxError, ValueError):
    """A partition count that is not a power of two between 1 and 64."""


class InvalidPayloadType(OutboxError, ValueError):
    """A payload type that is empty, longer than 1024 characters or not printable ASCII."""


class InvalidQueueTimeout(OutboxError, ValueError):
    """A queue's hook timeout that does not fit inside its lease budget (lease - headroom)."""


class QueueNotRegistered(OutboxError):
    """Enqueue to, or an operation on, a queue that has no partition rows in the database."""


class PartitionCountMismatch(OutboxError):
    """The database already holds this queue with a different number of partitions."""


class PayloadTooLarge(OutboxError, ValueError):
    """An encoded payload above `outbox.max_payload_bytes`."""


class SchedulerAlreadyRunning(OutboxError):
    """A second outbox scheduler on one SQLite database (SQLite supports a single scheduler process)."""


class LeaseLost(OutboxError):
    """The guarded ack found the partition lease held by someone else; the ack was rolled back."""
