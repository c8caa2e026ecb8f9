"""The leased, partitioned outbox scheduler: sequencer, partition processors, poller/reconciler, vacuum.

How a message travels:
1. `enqueue()` inserts body + incoming rows in the caller's transaction. `Outbox.transaction()` wakes the
   sequencer only after the commit (a rollback wakes nothing); any number of wake-ups before the
   sequencer runs coalesce into one. Woken after at least `sequencer_linger_seconds` (default 0.05)
   without a pass, it first waits that long, so the commits of that moment are sequenced, leased and
   acked together; woken sooner (a steady stream of commits), it goes on at once.
2. The sequencer moves committed incoming rows to outgoing with contiguous per-partition seqs (FIFO by
   incoming id, i.e. commit order for a single producer) and wakes that partition's processor.
3. A processor takes the partition lease (conditional UPDATE with expiry; `FOR UPDATE SKIP LOCKED` on
   PostgreSQL), reads a batch past the cursor, calls the queue handler per message in seq order, each
   under the queue timeout, and acks with one guarded transaction (`WHERE locked_by = me`) that moves the
   cursor forward and writes dead letters - or rolls back entirely when the lease was lost.
4. Outcomes: return → delivered; PermanentError → dead letter, the batch goes on; TransientError, a
   timeout or any other exception → the prefix is acked, this message and everything after it wait
   (head-of-line) for an exponential backoff with jitter stored in the database (`retry_at`).
5. The poller finds sequenced backlog whose lease is free or expired (other processes' rows, crashed
   holders, due retries); the reconciler finds committed rows nobody sequenced. Polling is the truth.

Clock: every time written to or compared in the outbox tables comes from the application clock in UTC
(`clock`, default `datetime.now(UTC)`), never the database's `now()`. SQLite has no timestamp type or
reliable `now()` with sub-second precision, so this is the one way both engines behave the same, and an
injected clock lets tests move time without sleeping. The cost is that replicas must keep their clocks
in sync (NTP) to well within `lease_headroom_seconds`; a skewed replica can at worst take an expired
lease early, and the guarded ack still keeps the cursor exact (at-least-once delivery, never a skip).

SQLite is single-process: `start()` takes an exclusive lock file next to the database and a second
scheduler refuses with SchedulerAlreadyRunning naming the holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import itertools
import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final, TypeVar

import databases
from prometheus_client import CollectorRegistry

from minichat_host import constants
from minichat_host.config import OutboxConfig
from minichat_host.db.engine import sqlite_path, sqlite_writes
from minichat_host.outbox import dead_letters as dl
from minichat_host.outbox.enqueue import (
    Clock,
    PartitionKey,
    Payload,
    enqueue,
    partition_for,
    utc_now,
    validate_partitions,
    validate_queue_name,
)
from minichat_host.outbox.errors import InvalidQueueTimeout, LeaseLost, SchedulerAlreadyRunning
from minichat_host.outbox.metrics import OutboxMetrics
from minichat_host.outbox.models import (
    DeadLetter,
    DeadLetterFilter,
    DeadLetterStatus,
    Delivery,
    Enqueued,
    QueueStatus,
)
from minichat_host.outbox.sql import DialectName
from minichat_host.outbox.status import queue_status
from minichat_host.outbox.store import (
    SEQUENCER_BATCH,
    SEQUENCER_PARTITIONS_PER_TRANSACTION,
    AckPlan,
    OutgoingRow,
    Partition,
    acquire_lease,
    ensure_partitions,
    guarded_ack,
    partitions_with_backlog,
    partitions_with_incoming,
    release_all_leases,
    release_lease,
    sequence_partition,
    sequence_partitions_sqlite,
)
from minichat_host.outbox.vacuum import vacuum
from minichat_host.plugins.errors import PermanentError, TransientError
from minichat_host.scheduling import after_ready_io

logger = logging.getLogger("minichat.outbox")

T = TypeVar("T")
Handler = Callable[[Delivery], Awaitable[None]]

# Consecutive batches one partition may run before yielding its processor slot to others.
MAX_BATCHES_PER_TURN: Final = 8
# Retry backoff is scaled by a random factor in [1 - JITTER, 1].
RETRY_JITTER: Final = 0.25
# Worker (database) error backoff: 100 ms doubling to 30 s, ±30 %.
WORKER_ERROR_BACKOFF_INITIAL: Final = 0.1
WORKER_ERROR_BACKOFF_MAX: Final = 30.0
# A partition another replica is sequencing is retried after this long.
SEQUENCER_BUSY_RETRY: Final = 0.05
DEFAULT_STOP_TIMEOUT: Final = 10.0


@dataclass
class QueueSpec:
    """A registered queue: its handler, partition count, hook timeout, batch size and lease duration."""

    name: str
    handler: Handler
    partitions: int
    timeout: float
    batch_size: int
    lease_seconds: float


@dataclass
class OutboxStats:
    """Process-local counters, for tests and debugging (the metrics carry the same per queue)."""

    sequencer_wakeups: int = 0
    sequencer_lingers: int = 0
    sequenced: int = 0
    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    lease_lost: int = 0
    polls: int = 0
    reconciles: int = 0


@dataclass
class _BatchResult:
    acked_seq: int
    delivered: int = 0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    retry_error: str | None = None
    # All started messages finished, but the batch stopped before its end (lease budget or shutdown).
    stopped_early: bool = False
    interrupted: bool = False


_CURRENT_TRANSACTION: contextvars.ContextVar[OutboxTransaction | None] = contextvars.ContextVar(
    "minichat_outbox_transaction", default=None
)


class OutboxTransaction:
    """Handle of `Outbox.transaction()`: enqueue into the open database transaction."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self.enqueued: list[Enqueued] = []

    async def enqueue(
        self,
        queue: str,
        key: PartitionKey,
        payload: Payload,
        *,
        payload_type: str = constants.PAYLOAD_TYPE_JSON,
    ) -> Enqueued:
        """Enqueue `payload` (msgspec Struct / mapping → JSON, or bytes) into the partition of `key`."""
        result = await enqueue(
            self._outbox.database,
            queue,
            key,
            payload,
            payload_type=payload_type,
            max_payload_bytes=self._outbox.config.max_payload_bytes,
            clock=self._outbox.clock,
            partition_ids=self._outbox.partition_ids(queue),
        )
        self.enqueued.append(result)
        return result


_IdsOrFilter = list[int] | tuple[int, ...] | DeadLetterFilter
_Letters = list[DeadLetter]
_Ids = list[int]


class DeadLetters:
    """Dead-letter operations bound to one database (see dead_letters.py for the semantics)."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def list(
        self, queue: str | None = None, status: DeadLetterStatus | None = "pending", limit: int = 100
    ) -> _Letters:
        return await dl.list_dead_letters(self._outbox.database, queue, status, limit)

    async def get(self, dead_letter_id: int) -> DeadLetter | None:
        return await dl.get_dead_letter(self._outbox.database, dead_letter_id)

    async def replay(self, ids_or_filter: _IdsOrFilter) -> _Letters:
        """Back at the end of its partition, in order; resolved. The local processors are woken."""
        letters = await dl.replay_dead_letters(
            self._outbox.database, self._outbox.dialect, _as_filter(ids_or_filter), clock=self._outbox.clock
        )
        for partition_id in {letter.partition_id for letter in letters}:
            self._outbox._wake_partition(partition_id)
        return letters

    async def discard(self, ids_or_filter: _IdsOrFilter) -> _Ids:
        return await dl.discard_dead_letters(
            self._outbox.database, _as_filter(ids_or_filter), clock=self._outbox.clock
        )

    async def claim(
        self, scope: DeadLetterFilter | None = None, *, timeout_seconds: float = dl.DEFAULT_CLAIM_SECONDS
    ) -> _Letters:
        return await dl.claim_dead_letters(
            self._outbox.database,
            self._outbox.dialect,
            scope,
            timeout_seconds=timeout_seconds,
            clock=self._outbox.clock,
        )

    async def resolve(self, ids: _Ids) -> _Ids:
        return await dl.resolve_dead_letters(self._outbox.database, ids, clock=self._outbox.clock)

    async def reject(self, ids: _Ids, reason: str) -> _Ids:
        return await dl.reject_dead_letters(self._outbox.database, ids, reason, clock=self._outbox.clock)

    async def cleanup(self, scope: DeadLetterFilter | None = None) -> _Ids:
        return await dl.cleanup_dead_letters(self._outbox.database, scope)


def _as_filter(ids_or_filter: list[int] | tuple[int, ...] | DeadLetterFilter) -> DeadLetterFilter:
    if isinstance(ids_or_filter, DeadLetterFilter):
        return ids_or_filter
    return DeadLetterFilter(ids=tuple(int(i) for i in ids_or_filter))


class _SQLiteProcessLock:
    """An exclusive `flock` on `<database>.outbox-lock`: one scheduler process per SQLite database."""

    def __init__(self, database_path: Path) -> None:
        self.database_path = database_path
        self.path = database_path.with_name(database_path.name + ".outbox-lock")
        self._file: IO[str] | None = None

    def acquire(self, worker_id: str) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Held open (and locked) until release().
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise SchedulerAlreadyRunning(
                f"another outbox scheduler is already running on the SQLite database {self.database_path} "
                f"(lock file {self.path} held by {holder}). SQLite supports a single minichat process; "
                "stop the other process, or use PostgreSQL to run several replicas."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} (worker {worker_id})\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            import fcntl

            with contextlib.suppress(OSError):
                self._file.seek(0)
                self._file.truncate()
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def default_worker_id() -> str:
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(3)}"


class Outbox:
    """The outbox of one process: register queues, enqueue in transactions, run the scheduler."""

    def __init__(
        self,
        database: databases.Database,
        config: OutboxConfig,
        *,
        dialect: str,
        metrics: OutboxMetrics | None = None,
        worker_id: str | None = None,
        clock: Clock | None = None,
        rng: Callable[[], float] | None = None,
    ) -> None:
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported dialect {dialect!r} (sqlite or postgresql)")
        self.database = database
        self.config = config
        self.dialect: DialectName = "sqlite" if dialect == "sqlite" else "postgresql"
        self.metrics = metrics if metrics is not None else OutboxMetrics(CollectorRegistry())
        self.worker_id = (worker_id or default_worker_id())[:128]
        self.clock: Clock = clock or utc_now
        self._random = rng or random.random
        self.stats = OutboxStats()
        self.dead_letters = DeadLetters(self)
        self._queues: dict[str, QueueSpec] = {}
        self._partitions: dict[int, Partition] = {}
        self._ids_by_queue: dict[str, dict[int, int]] = {}
        self._registered_in_db = False
        self._started = False
        self._stopping = False
        self._dirty: dict[int, None] = {}
        self._sequencer_wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._again: set[int] = set()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._error_counts: dict[int, int] = {}
        self._background: list[asyncio.Task[None]] = []
        self._slots = asyncio.Semaphore(config.max_concurrent_partitions)
        self._process_lock: _SQLiteProcessLock | None = None

    # --- registration --------------------------------------------------------------------------------

    def register_queue(
        self,
        name: str,
        handler: Handler,
        *,
        partitions: int,
        timeout: float,
        batch_size: int | None = None,
        lease_seconds: float | None = None,
    ) -> QueueSpec:
        """Register `handler` for `name` before `start()`.

        `timeout` bounds every handler call and must stay below `lease - lease_headroom_seconds` (the
        lease is `outbox.lease_seconds` unless `lease_seconds` is given for this queue). `batch_size`
        defaults to `outbox.queues.<name>.batch_size`.
        """
        validate_queue_name(name)
        validate_partitions(partitions)
        if self._started:
            raise RuntimeError(f"register queue {name!r} before Outbox.start()")
        if name in self._queues:
            raise ValueError(f"queue {name!r} is already registered")
        lease = float(lease_seconds if lease_seconds is not None else self.config.lease_seconds)
        budget = lease - self.config.lease_headroom_seconds
        if timeout <= 0 or timeout >= budget:
            raise InvalidQueueTimeout(
                f"queue {name!r}: hook timeout {timeout}s must be above 0 and below the lease budget "
                f"{budget:g}s (lease {lease:g}s - headroom {self.config.lease_headroom_seconds:g}s)"
            )
        queue_config = self.config.queues.get(name)
        size = batch_size if batch_size is not None else (queue_config.batch_size if queue_config else 10)
        if size < 1:
            raise ValueError(f"queue {name!r}: batch_size must be at least 1")
        spec = QueueSpec(name, handler, partitions, float(timeout), size, lease)
        self._queues[name] = spec
        self._registered_in_db = False
        return spec

    @property
    def queues(self) -> dict[str, QueueSpec]:
        return dict(self._queues)

    def partition_for(self, queue: str, key: PartitionKey) -> int:
        """The partition a key maps to in a registered queue (documented in enqueue.py)."""
        return partition_for(key, self._queues[queue].partitions)

    def partition_ids(self, queue: str) -> dict[int, int] | None:
        """Partition index → id of a queue registered here and created in the database, else None."""
        return self._ids_by_queue.get(queue)

    async def ensure_queues(self) -> None:
        """Create the database rows of every registered queue (done by `start()`; idempotent)."""
        if self._registered_in_db:
            return
        for spec in self._queues.values():
            ids = await self._write(
                ensure_partitions(self.database, self.dialect, spec.name, spec.partitions)
            )
            self._ids_by_queue[spec.name] = ids
            for index, partition_id in ids.items():
                self._partitions[partition_id] = Partition(partition_id, spec.name, index)
        self._registered_in_db = True

    # --- enqueue --------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self, first_statement: str | None = None) -> AsyncIterator[OutboxTransaction]:
        """`async with outbox.transaction() as tx:` a database transaction; `tx.enqueue(...)` inside it.

        Repositories using the same `Database` in this task join the transaction. The sequencer is woken
        after the commit; an exception rolls everything back and wakes nothing. Nested blocks join the
        outer one and wake when it commits. Inside a foreign outer `database.transaction()`, the commit
        happens later than this block: the rows are then found by the reconciler, or call `notify()`.
        `first_statement` (literal SQL) runs first, sent with the BEGIN on PostgreSQL (db/engine.py).
        """
        options: dict[str, Any] = {} if first_statement is None else {"first_statement": first_statement}
        outer = _CURRENT_TRANSACTION.get()
        if outer is not None and outer._outbox is self:
            async with self.database.transaction(**options):
                yield outer
            return
        handle = OutboxTransaction(self)
        token = _CURRENT_TRANSACTION.set(handle)
        try:
            # Connection first (on SQLite opening one is slow), then BEGIN (the write gate's turn on SQLite).
            async with self.database.connection(), self.database.transaction(**options):
                yield handle
        finally:
            _CURRENT_TRANSACTION.reset(token)
        self._mark_dirty(entry.partition_id for entry in handle.enqueued)

    def notify(self, queue: str, partition: int | None = None) -> None:
        """Wake the sequencer for `queue` (one partition, or all) after committing low-level enqueues."""
        ids = self._ids_by_queue.get(queue)
        if not ids:
            return
        if partition is None:
            self._mark_dirty(ids.values())
        elif partition in ids:
            self._mark_dirty([ids[partition]])

    def _mark_dirty(self, partition_ids: Any) -> None:
        marked = False
        for partition_id in partition_ids:
            if partition_id in self._partitions:
                self._dirty[partition_id] = None
                marked = True
        if marked:
            self._sequencer_wake.set()

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Register queues in the database and start the sequencer, poller/reconciler and vacuum."""
        if self._started:
            raise RuntimeError("the outbox is already started")
        if self.dialect == "sqlite":
            self._process_lock = _SQLiteProcessLock(sqlite_path(str(self.database.url)).resolve())
            self._process_lock.acquire(self.worker_id)
        try:
            await self.ensure_queues()
        except BaseException:
            self._release_process_lock()
            raise
        self._started = True
        self._stopping = False
        self._stop_requested.clear()
        self._background = [
            asyncio.create_task(self._sequencer_loop(), name="outbox-sequencer"),
            asyncio.create_task(self._poller_loop(), name="outbox-poller"),
            asyncio.create_task(self._vacuum_loop(), name="outbox-vacuum"),
        ]
        logger.info(
            "outbox started: worker %s, queues %s",
            self.worker_id,
            ", ".join(sorted(self._queues)) or "(none)",
        )

    async def stop(self, grace_seconds: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop taking leases, let in-flight messages finish (up to `grace_seconds`), ack, release leases.

        Shutdown is cooperative: every loop and worker finishes the database transaction it is in and
        exits. Only what is still running after the grace period is cancelled (a handler that hangs);
        cancelling in the middle of a transaction could leave a pooled connection checked out.
        """
        if not self._started:
            return
        self._stopping = True
        self._stop_requested.set()
        self._sequencer_wake.set()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks = [*self._background, *self._workers.values()]
        _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._background = []
        # Anything still leased to us (e.g. an ack that failed on a database error) goes back now.
        if self._partitions:
            try:
                await self._write(release_all_leases(self.database, list(self._partitions), self.worker_id))
            except Exception:
                logger.exception("outbox: releasing leases at shutdown failed (they expire on their own)")
        self._started = False
        self._release_process_lock()
        logger.info("outbox stopped: worker %s", self.worker_id)

    def _release_process_lock(self) -> None:
        if self._process_lock is not None:
            self._process_lock.release()
            self._process_lock = None

    @property
    def running(self) -> bool:
        return self._started and not self._stopping

    # --- deterministic driving (tests, CLI) -----------------------------------------------------------

    async def run_once(self) -> int:
        """One pass without background tasks: sequence everything committed, then process every partition
        whose lease is free and whose backoff has passed until it is empty or waits. Returns the number of
        messages acknowledged (delivered or dead-lettered). Not for use while `start()`ed."""
        if self._started:
            raise RuntimeError("run_once() drives a stopped outbox; this one is running")
        await self.ensure_queues()
        before = self.stats.delivered + self.stats.dead_lettered
        self._mark_dirty(await partitions_with_incoming(self.database, self.dialect, list(self._partitions)))
        await self._sequence_dirty()
        now = self.clock()
        for partition_id, retry_at in await partitions_with_backlog(
            self.database, self.dialect, list(self._partitions), now
        ):
            if retry_at is None or retry_at <= now:
                while await self._process_partition(partition_id):
                    pass
        return self.stats.delivered + self.stats.dead_lettered - before

    async def status(self) -> list[QueueStatus]:
        """QueueStatus per partition of this outbox's queues."""
        return await queue_status(self.database, sorted(self._queues), clock=self.clock, dialect=self.dialect)

    async def refresh_metrics(self) -> None:
        self.metrics.observe_status(await self.status())

    async def vacuum(self) -> int:
        """Delete acknowledged rows of this outbox's partitions now; returns outgoing rows deleted."""
        await self.ensure_queues()
        return await vacuum(self.database, list(self._partitions), write=self._write)

    # --- internals: helpers ---------------------------------------------------------------------------

    def _session(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Keep one connection for a long-running task on SQLite (databases otherwise takes a connection
        from the pool for every transaction); pooled as usual on PostgreSQL."""
        if self.dialect == "sqlite":
            connection: contextlib.AbstractAsyncContextManager[Any] = self.database.connection()
            return connection
        return contextlib.nullcontext()

    async def _write(self, work: Awaitable[T]) -> T:
        """SQLite: the work's statements on the writer connection, in the write gate's queue (one writer per
        process, waiting in asyncio rather than in SQLite's sleeping busy handler; db/engine.py)."""
        if self.dialect != "sqlite":
            return await work
        async with sqlite_writes(self.database):
            return await work

    def _retry_delay(self, failures: int) -> float:
        exponent = min(max(failures, 1) - 1, 30)
        delay = min(self.config.retry_max_seconds, self.config.retry_base_seconds * (2.0**exponent))
        return delay * (1.0 - RETRY_JITTER * self._random())

    def _error_delay(self, partition_id: int) -> float:
        count = self._error_counts.get(partition_id, 0) + 1
        self._error_counts[partition_id] = count
        delay = min(WORKER_ERROR_BACKOFF_MAX, WORKER_ERROR_BACKOFF_INITIAL * (2.0 ** min(count - 1, 20)))
        return delay * (0.7 + 0.6 * self._random())

    def _wake_later(self, partition_id: int, delay: float) -> None:
        if self._stopping or not self._started:
            return
        previous = self._timers.pop(partition_id, None)
        if previous is not None:
            previous.cancel()
        loop = asyncio.get_running_loop()
        self._timers[partition_id] = loop.call_later(max(delay, 0.0), self._timer_fired, partition_id)

    def _timer_fired(self, partition_id: int) -> None:
        self._timers.pop(partition_id, None)
        self._wake_partition(partition_id)

    def _wake_partition(self, partition_id: int) -> None:
        if not self._started or self._stopping or partition_id not in self._partitions:
            return
        task = self._workers.get(partition_id)
        if task is not None and not task.done():
            self._again.add(partition_id)
            return
        self._workers[partition_id] = asyncio.create_task(
            self._partition_worker(partition_id), name=f"outbox-partition-{partition_id}"
        )

    # --- internals: background loops -------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        """Sleep, but return at once when stop() is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)

    async def _sequencer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        linger = self.config.sequencer_linger_seconds
        idle_since = -math.inf
        async with self._session():
            while True:
                await self._sequencer_wake.wait()
                if self._stopping:
                    return
                self.stats.sequencer_wakeups += 1
                if linger > 0 and loop.time() - idle_since >= linger:
                    # Woken after a quiet spell: the commits of the next moment (the other streams of a
                    # burst ending together) are sequenced, leased and acked with this one. Under a steady
                    # stream of commits the passes batch by themselves and go on at once.
                    self.stats.sequencer_lingers += 1
                    await self._pause(linger)
                    if self._stopping:
                        return
                self._sequencer_wake.clear()
                await self._sequence_dirty()
                idle_since = loop.time()

    async def _sequence_dirty(self) -> int:
        if self.dialect == "sqlite":
            return await self._sequence_dirty_together()
        total = 0
        while self._dirty and not self._stopping:
            partition_id = next(iter(self._dirty))
            del self._dirty[partition_id]
            await after_ready_io()
            try:
                count = await self._write(
                    sequence_partition(self.database, self.dialect, partition_id, self.clock())
                )
            except Exception:
                logger.exception("outbox: sequencing partition %s failed", partition_id)
                self._redirty_later(partition_id, self._error_delay(partition_id))
                continue
            if count is None:
                self._redirty_later(partition_id, SEQUENCER_BUSY_RETRY)
                continue
            if count:
                partition = self._partitions[partition_id]
                self.metrics.enqueued.labels(partition.queue).inc(count)
                self.stats.sequenced += count
                total += count
                self._wake_partition(partition_id)
                if count == SEQUENCER_BATCH:
                    self._dirty[partition_id] = None
        return total

    async def _sequence_dirty_together(self) -> int:
        """SQLite: the dirty partitions in transactions of up to SEQUENCER_PARTITIONS_PER_TRANSACTION."""
        total = 0
        while self._dirty and not self._stopping:
            await after_ready_io()
            ids = list(itertools.islice(self._dirty, SEQUENCER_PARTITIONS_PER_TRANSACTION))
            for partition_id in ids:
                del self._dirty[partition_id]
            try:
                counts = await self._write(sequence_partitions_sqlite(self.database, ids, self.clock()))
            except Exception:
                logger.exception("outbox: sequencing partitions %s failed", ids)
                for partition_id in ids:
                    self._redirty_later(partition_id, self._error_delay(partition_id))
                continue
            for partition_id, count in counts.items():
                if not count:
                    continue
                partition = self._partitions[partition_id]
                self.metrics.enqueued.labels(partition.queue).inc(count)
                self.stats.sequenced += count
                total += count
                self._wake_partition(partition_id)
                if count == SEQUENCER_BATCH:
                    self._dirty[partition_id] = None
        return total

    def _redirty_later(self, partition_id: int, delay: float) -> None:
        if not self._started:
            return
        asyncio.get_running_loop().call_later(delay, self._mark_dirty, [partition_id])

    async def _poller_loop(self) -> None:
        next_reconcile = 0.0
        async with self._session():
            while not self._stopping:
                try:
                    if time.monotonic() >= next_reconcile:
                        next_reconcile = time.monotonic() + self.config.reconcile_interval_seconds
                        await self._reconcile()
                    await self._poll()
                except Exception:
                    logger.exception("outbox: poll failed")
                await self._pause(self.config.poll_interval_seconds)

    async def _reconcile(self) -> None:
        self.stats.reconciles += 1
        self._mark_dirty(await partitions_with_incoming(self.database, self.dialect, list(self._partitions)))
        try:
            await self.refresh_metrics()
        except Exception:
            logger.exception("outbox: refreshing metrics failed")

    async def _poll(self) -> None:
        self.stats.polls += 1
        now = self.clock()
        for partition_id, retry_at in await partitions_with_backlog(
            self.database, self.dialect, list(self._partitions), now
        ):
            if retry_at is None or retry_at <= now:
                self._wake_partition(partition_id)
            elif partition_id not in self._timers:
                self._wake_later(partition_id, (retry_at - now).total_seconds())

    async def _vacuum_loop(self) -> None:
        while True:
            await self._pause(self.config.vacuum_interval_seconds)
            if self._stopping:
                return
            try:
                deleted = await vacuum(self.database, list(self._partitions), write=self._write)
                if deleted:
                    logger.debug("outbox vacuum deleted %d acknowledged messages", deleted)
            except Exception:
                logger.exception("outbox: vacuum failed")

    # --- internals: partition processing ---------------------------------------------------------------

    async def _partition_worker(self, partition_id: int) -> None:
        try:
            async with self._session():
                await self._partition_turns(partition_id)
        finally:
            if self._workers.get(partition_id) is asyncio.current_task():
                del self._workers[partition_id]

    async def _partition_turns(self, partition_id: int) -> None:
        while not self._stopping:
            self._again.discard(partition_id)
            async with self._slots:
                if self._stopping:
                    return
                try:
                    more = await self._process_partition(partition_id)
                    self._error_counts.pop(partition_id, None)
                except Exception:
                    logger.exception("outbox: processing partition %s failed", partition_id)
                    self._wake_later(partition_id, self._error_delay(partition_id))
                    return
            if not more and partition_id not in self._again:
                return

    async def _process_partition(self, partition_id: int) -> bool:
        """Run up to MAX_BATCHES_PER_TURN batches under one lease; True when more work is waiting."""
        partition = self._partitions[partition_id]
        spec = self._queues[partition.queue]
        await after_ready_io()
        started = time.monotonic()
        now = self.clock()
        lease = await self._write(
            acquire_lease(
                self.database,
                self.dialect,
                partition_id,
                self.worker_id,
                now,
                now + dt.timedelta(seconds=spec.lease_seconds),
                spec.batch_size,
            )
        )
        if lease is None:
            return False
        expected, attempts, rows = lease.processed_seq, lease.attempts, lease.rows
        interrupted = lease.interrupted
        batches = 0
        while True:
            batches += 1
            budget_end = started + spec.lease_seconds - self.config.lease_headroom_seconds
            result = _BatchResult(acked_seq=expected)
            try:
                await self._deliver_batch(spec, partition, rows, attempts, interrupted, result, budget_end)
            except asyncio.CancelledError:
                # Shut down mid-handler: keep what completed, give the lease back, do not count a failure.
                await asyncio.shield(self._ack_interrupted(spec, partition, expected, result))
                raise
            finished = result.retry_error is None
            more_waiting = finished and (result.stopped_early or len(rows) == spec.batch_size)
            keep = more_waiting and not self._stopping and batches < MAX_BATCHES_PER_TURN
            plan = self._plan(spec, result, expected, attempts, keep)
            started = time.monotonic()
            try:
                rows = await self._write(
                    guarded_ack(self.database, self.dialect, partition_id, self.worker_id, plan)
                )
            except LeaseLost:
                self.stats.lease_lost += 1
                self.metrics.lease_lost.labels(spec.name).inc()
                logger.warning(
                    "outbox: lease on %s/%d was taken over before the ack; %d messages will be redelivered",
                    spec.name,
                    partition.index,
                    result.acked_seq - expected,
                )
                return False
            self._count(spec, result)
            if not finished:
                assert plan.retry_at is not None
                self._wake_later(partition_id, (plan.retry_at - self.clock()).total_seconds())
                return False
            if not keep:
                # Released at the end of a turn with more waiting: the worker queues for a slot again.
                return more_waiting and not self._stopping
            if not rows:
                return False
            expected, attempts, interrupted = plan.new_seq, 1, False
            await after_ready_io()

    def _plan(
        self, spec: QueueSpec, result: _BatchResult, expected: int, attempts: int, keep: bool
    ) -> AckPlan:
        now = self.clock()
        if result.retry_error is not None:
            # The failed message is the head: its attempt was counted when the lease was taken, unless
            # the cursor moved, in which case a new head has failed once.
            failures = attempts if result.acked_seq == expected else 1
            return AckPlan(
                expected_seq=expected,
                new_seq=result.acked_seq,
                attempts=failures,
                last_error=result.retry_error[:4000],
                retry_at=now + dt.timedelta(seconds=self._retry_delay(failures)),
                dead_letters=result.dead_letters,
            )
        if keep:
            return AckPlan(
                expected_seq=expected,
                new_seq=result.acked_seq,
                attempts=1,
                last_error=None,
                retry_at=None,
                dead_letters=result.dead_letters,
                extend_until=now + dt.timedelta(seconds=spec.lease_seconds),
                next_batch=spec.batch_size,
            )
        return AckPlan(
            expected_seq=expected,
            new_seq=result.acked_seq,
            attempts=0 if result.acked_seq > expected else max(attempts - 1, 0),
            last_error=None,
            retry_at=None,
            dead_letters=result.dead_letters,
        )

    def _count(self, spec: QueueSpec, result: _BatchResult) -> None:
        if result.delivered:
            self.stats.delivered += result.delivered
            self.metrics.delivered.labels(spec.name).inc(result.delivered)
        if result.dead_letters:
            self.stats.dead_lettered += len(result.dead_letters)
            self.metrics.dead_lettered.labels(spec.name).inc(len(result.dead_letters))
        if result.retry_error is not None:
            self.stats.retried += 1
            self.metrics.retried.labels(spec.name).inc()

    async def _deliver_batch(
        self,
        spec: QueueSpec,
        partition: Partition,
        rows: list[OutgoingRow],
        attempts: int,
        interrupted: bool,
        result: _BatchResult,
        budget_end: float,
    ) -> None:
        """Deliver `rows` in seq order into `result`.

        The head carries the partition's attempt count; later messages carry it only when the previous
        holder was interrupted (they may have been delivered already), else 0 (a retry stops at the head).
        """
        for index, row in enumerate(rows):
            if index and (self._stopping or time.monotonic() + spec.timeout > budget_end):
                # Never start a message that could outlive the lease; the rest comes in the next batch.
                result.stopped_early = True
                break
            delivery = Delivery(
                queue=spec.name,
                partition=partition.index,
                partition_id=partition.id,
                seq=row.seq,
                payload=row.payload,
                payload_type=row.payload_type,
                attempts=max(attempts - 1, 0) if index == 0 or interrupted else 0,
                created_at=row.created_at,
            )
            outcome, error = await self._call_handler(spec, delivery)
            if outcome == "ok":
                result.delivered += 1
                result.acked_seq = row.seq
            elif outcome == "reject":
                result.acked_seq = row.seq
                result.dead_letters.append(
                    {
                        "partition_id": partition.id,
                        "seq": row.seq,
                        "payload": row.payload,
                        "payload_type": row.payload_type,
                        "created_at": row.created_at,
                        "failed_at": self.clock(),
                        "last_error": (error or "rejected")[:4000],
                        "attempts": delivery.attempts + 1,
                        "status": "pending",
                    }
                )
            else:
                result.retry_error = error or "retry"
                break

    async def _call_handler(self, spec: QueueSpec, delivery: Delivery) -> tuple[str, str | None]:
        started = time.perf_counter()
        outcome, error = "ok", None
        try:
            async with asyncio.timeout(spec.timeout):
                await spec.handler(delivery)
        except PermanentError as exc:
            outcome, error = "reject", str(exc) or type(exc).__name__
        except TimeoutError:
            outcome, error = "timeout", f"hook timed out after {spec.timeout:g}s"
        except TransientError as exc:
            outcome, error = "retry", str(exc) or type(exc).__name__
        except Exception as exc:
            logger.exception(
                "outbox: handler of %s failed on partition %d seq %d (will retry)",
                spec.name,
                delivery.partition,
                delivery.seq,
            )
            outcome, error = "retry", f"{type(exc).__name__}: {exc}"
        self.metrics.hook_latency.labels(spec.name, outcome).observe(time.perf_counter() - started)
        if outcome in ("retry", "timeout"):
            logger.warning(
                "outbox: %s partition %d seq %d attempt %d: %s",
                spec.name,
                delivery.partition,
                delivery.seq,
                delivery.attempts + 1,
                error,
            )
        return ("retry" if outcome == "timeout" else outcome), error

    async def _ack_interrupted(
        self, spec: QueueSpec, partition: Partition, expected: int, result: _BatchResult
    ) -> None:
        try:
            if result.acked_seq > expected or result.dead_letters:
                plan = AckPlan(
                    expected_seq=expected,
                    new_seq=result.acked_seq,
                    attempts=0,
                    last_error=None,
                    retry_at=None,
                    dead_letters=result.dead_letters,
                )
                await self._write(
                    guarded_ack(self.database, self.dialect, partition.id, self.worker_id, plan)
                )
                self._count(spec, result)
            else:
                await self._write(
                    release_lease(
                        self.database, self.dialect, partition.id, self.worker_id, uncount_attempt=True
                    )
                )
        except Exception:
            logger.exception("outbox: releasing %s/%d at shutdown failed", spec.name, partition.index)
