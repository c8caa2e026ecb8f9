"""Prometheus metrics of the outbox, on a registry the caller owns (tests pass a fresh one each)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from minichat_host.outbox.models import QueueStatus

HOOK_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class OutboxMetrics:
    """Counters per queue, gauges refreshed from `status()` on an interval, and the hook latency histogram.

    `enqueued` counts committed messages when they are sequenced (a rolled-back enqueue never counts).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.enqueued = Counter(
            "minichat_outbox_enqueued",
            "Committed messages sequenced into a queue",
            ["queue"],
            registry=registry,
        )
        self.delivered = Counter(
            "minichat_outbox_delivered",
            "Messages whose hook succeeded and whose ack committed",
            ["queue"],
            registry=registry,
        )
        self.retried = Counter(
            "minichat_outbox_retried",
            "Deliveries that failed transiently (error, timeout) and will be retried with backoff",
            ["queue"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "minichat_outbox_dead_lettered",
            "Messages rejected to dead letters",
            ["queue"],
            registry=registry,
        )
        self.dropped = Counter(
            "minichat_outbox_dropped",
            "Messages acknowledged without a hook call (e.g. audit with no audit plugin configured)",
            ["queue"],
            registry=registry,
        )
        self.lease_lost = Counter(
            "minichat_outbox_lease_lost",
            "Batches whose ack was rolled back because another worker took the partition lease",
            ["queue"],
            registry=registry,
        )
        self.backlog = Gauge(
            "minichat_outbox_backlog",
            "Committed messages not yet acknowledged",
            ["queue"],
            registry=registry,
        )
        self.oldest_pending_age = Gauge(
            "minichat_outbox_oldest_pending_age_seconds",
            "Age of the oldest committed, unacknowledged message (0 when none)",
            ["queue"],
            registry=registry,
        )
        self.dead_letters_pending = Gauge(
            "minichat_outbox_dead_letters_pending",
            "Dead letters waiting for replay or discard",
            ["queue"],
            registry=registry,
        )
        self.hook_latency = Histogram(
            "minichat_outbox_hook_duration_seconds",
            "Time spent in queue handlers, by outcome (ok, retry, timeout, reject)",
            ["queue", "outcome"],
            buckets=HOOK_LATENCY_BUCKETS,
            registry=registry,
        )

    def observe_status(self, statuses: Iterable[QueueStatus]) -> None:
        """Set the gauges from a `status()` snapshot (summed / maxed over each queue's partitions)."""
        backlog: dict[str, int] = {}
        oldest: dict[str, float] = {}
        dead: dict[str, int] = {}
        for status in statuses:
            backlog[status.queue] = backlog.get(status.queue, 0) + status.backlog
            dead[status.queue] = dead.get(status.queue, 0) + status.dead_letters
            age = status.oldest_pending_age_seconds or 0.0
            oldest[status.queue] = max(oldest.get(status.queue, 0.0), age)
        for queue, value in backlog.items():
            self.backlog.labels(queue).set(value)
            self.oldest_pending_age.labels(queue).set(oldest[queue])
            self.dead_letters_pending.labels(queue).set(dead[queue])
