"""Structs the outbox hands to handlers, admin endpoints and the CLI."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, TypeVar

import msgspec

from minichat_host.plugins.errors import PermanentError

T = TypeVar("T")

DeadLetterStatus = Literal["pending", "reprocessing", "resolved", "discarded"]


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One message handed to a queue handler.

    `attempts` counts earlier deliveries of this message that did not complete (failed, timed out, or
    interrupted by a crash or a lost lease); 0 on the first delivery. After an interruption every message
    of the interrupted batch counts it, since any of them may have reached the handler already.
    """

    queue: str
    partition: int
    seq: int
    payload: bytes
    payload_type: str
    attempts: int
    created_at: dt.datetime
    partition_id: int = 0

    def decode(self, type: type[T]) -> T:
        """The JSON payload as `type`; an undecodable payload raises PermanentError (→ dead letter)."""
        try:
            return msgspec.json.decode(self.payload, type=type)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise PermanentError(f"undecodable {self.payload_type} payload: {exc}") from None

    def json(self) -> Any:
        """The JSON payload as builtins; PermanentError when it is not JSON."""
        return self.decode(Any)  # type: ignore[arg-type]


class Enqueued(msgspec.Struct, frozen=True, kw_only=True):
    """Where an enqueued message went: call `Outbox.notify(queue, partition)` after committing."""

    queue: str
    partition: int
    partition_id: int


class QueueStatus(msgspec.Struct, kw_only=True):
    """One partition of one queue, as `minichat outbox status` and the admin API show it."""

    queue: str
    partition: int
    partition_id: int
    last_seq: int
    processed_seq: int
    # Messages not yet acknowledged: sequenced ones past the cursor plus committed, not yet sequenced ones.
    backlog: int
    unsequenced: int
    attempts: int
    last_error: str | None = None
    locked_by: str | None = None
    locked_until: dt.datetime | None = None
    retry_at: dt.datetime | None = None
    oldest_pending_age_seconds: float | None = None
    dead_letters: int = 0


class DeadLetter(msgspec.Struct, kw_only=True):
    """A rejected message with everything needed to inspect and replay it."""

    id: int
    queue: str
    partition: int
    partition_id: int
    seq: int
    payload: bytes
    payload_type: str
    created_at: dt.datetime
    failed_at: dt.datetime
    last_error: str
    attempts: int
    status: DeadLetterStatus
    completed_at: dt.datetime | None = None
    deadline: dt.datetime | None = None

    def payload_text(self) -> str:
        """The payload as text (JSON payloads are UTF-8); undecodable bytes are escaped."""
        return self.payload.decode("utf-8", errors="backslashreplace")


class DeadLetterFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which dead letters an operation applies to; every field that is set must match."""

    ids: tuple[int, ...] | None = None
    queue: str | None = None
    partition: int | None = None
    payload_type: str | None = None
