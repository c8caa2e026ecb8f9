"""Transactional, partitioned, leased outbox: enqueue in the caller's transaction, deliver to handlers.

See scheduler.py for how a message travels and enqueue.py for how keys map to partitions.
"""

from __future__ import annotations

from minichat_host.outbox.dead_letters import (
    claim_dead_letters,
    cleanup_dead_letters,
    count_dead_letters,
    discard_dead_letters,
    get_dead_letter,
    list_dead_letters,
    reject_dead_letters,
    replay_dead_letters,
    resolve_dead_letters,
)
from minichat_host.outbox.enqueue import enqueue, key_hash, partition_for
from minichat_host.outbox.errors import (
    InvalidPartitionCount,
    InvalidPayloadType,
    InvalidQueueName,
    InvalidQueueTimeout,
    LeaseLost,
    OutboxError,
    PartitionCountMismatch,
    PayloadTooLarge,
    QueueNotRegistered,
    SchedulerAlreadyRunning,
)
from minichat_host.outbox.metrics import OutboxMetrics
from minichat_host.outbox.models import DeadLetter, DeadLetterFilter, Delivery, Enqueued, QueueStatus
from minichat_host.outbox.routing import queue_timing, register_domain_queue, register_plugin_queues
from minichat_host.outbox.scheduler import DeadLetters, Outbox, OutboxStats, OutboxTransaction, QueueSpec
from minichat_host.outbox.status import queue_status
from minichat_host.outbox.vacuum import vacuum

__all__ = [
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetters",
    "Delivery",
    "Enqueued",
    "InvalidPartitionCount",
    "InvalidPayloadType",
    "InvalidQueueName",
    "InvalidQueueTimeout",
    "LeaseLost",
    "Outbox",
    "OutboxError",
    "OutboxMetrics",
    "OutboxStats",
    "OutboxTransaction",
    "PartitionCountMismatch",
    "PayloadTooLarge",
    "QueueNotRegistered",
    "QueueSpec",
    "QueueStatus",
    "SchedulerAlreadyRunning",
    "claim_dead_letters",
    "cleanup_dead_letters",
    "count_dead_letters",
    "discard_dead_letters",
    "enqueue",
    "get_dead_letter",
    "key_hash",
    "list_dead_letters",
    "partition_for",
    "queue_status",
    "queue_timing",
    "register_domain_queue",
    "register_plugin_queues",
    "reject_dead_letters",
    "replay_dead_letters",
    "resolve_dead_letters",
    "vacuum",
]
