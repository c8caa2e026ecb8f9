"""Queue → hook routing (original-outbox-and-plugins.md §2): usage → model_policy, audit → audit hooks.

Outcome mapping, on top of the scheduler's (return = ok, TransientError / timeout / other exception =
retry, PermanentError = dead letter):
- usage: bad JSON → dead letter; no model-policy plugin (resolution error) → retry (nothing is lost);
  `minichat_publish_usage(event=UsageEvent)` otherwise.
- audit: no audit plugin (not configured or not resolvable) → ok, dropped and counted in
  `minichat_outbox_dropped_total`; bad JSON / an envelope that does not fit → dead letter; otherwise the
  hook named by the envelope type (turn / mutation turn_retry|turn_edit / delete).
The other queues (attachment_cleanup, chat_cleanup, thread_summary) are registered by the domain with
`register_domain_queue()` so they get the same timeout and lease rules.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol

import msgspec

from minichat_host import constants
from minichat_host.config import Config
from minichat_host.outbox.models import Delivery
from minichat_host.outbox.scheduler import Handler, Outbox, QueueSpec
from minichat_host.plugins.errors import PermanentError, PluginConfigError, TransientError
from minichat_host.plugins.types import (
    AuditEnvelope,
    TurnAuditEvent,
    TurnDeleteAuditEvent,
    TurnMutationAuditEvent,
    UsageEvent,
)

logger = logging.getLogger("minichat.outbox")

# The original calls every audit hook under a 30 s timeout (and gives the audit queue a 60 s lease).
AUDIT_TIMEOUT_SECONDS: Final = 30.0
# The plugin host's own timeout fires just before the queue's, so the error names the plugin and hook.
_PLUGIN_TIMEOUT_SHARE: Final = 0.98


class PluginCaller(Protocol):
    """What routing needs from minichat_host.plugins.manager.PluginHost."""

    def has(self, capability: str, provider_id: str | None = None) -> bool: ...

    async def call(
        self,
        capability: str,
        hook: str,
        *,
        provider_id: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - PluginHost.call signature
        **kwargs: Any,
    ) -> Any: ...


def queue_timing(config: Config, queue: str, default_timeout: float | None = None) -> tuple[float, float]:
    """(hook timeout, lease seconds) for a queue.

    The timeout is `outbox.queues.<queue>.timeout_seconds` when configured, else `default_timeout`, else
    the QueueConfig default. The lease is `outbox.lease_seconds`, doubled from the timeout when the
    timeout would not fit inside `lease - headroom` (as the original gives audit 60 s for its 30 s).
    """
    configured = config.outbox.queues.get(queue)
    if configured is not None:
        timeout = configured.timeout_seconds
    elif default_timeout is not None:
        timeout = default_timeout
    else:
        timeout = config.queue_config(queue).timeout_seconds
    lease = config.outbox.lease_seconds
    if timeout >= lease - config.outbox.lease_headroom_seconds:
        lease = max(2 * timeout, timeout + 2 * config.outbox.lease_headroom_seconds)
    return timeout, lease


def register_domain_queue(
    outbox: Outbox, config: Config, queue: str, handler: Handler, *, default_timeout: float | None = None
) -> QueueSpec:
    """Register a domain queue with the configured partitions, timeout and a lease that fits it."""
    timeout, lease = queue_timing(config, queue, default_timeout)
    return outbox.register_queue(
        queue, handler, partitions=config.outbox.num_partitions, timeout=timeout, lease_seconds=lease
    )


class UsageHandler:
    """usage queue → model_policy `minichat_publish_usage(event=UsageEvent)`."""

    def __init__(self, plugin_host: PluginCaller, timeout: float) -> None:
        self.plugin_host = plugin_host
        self.timeout = timeout

    async def __call__(self, delivery: Delivery) -> None:
        event = delivery.decode(UsageEvent)
        try:
            await self.plugin_host.call(
                constants.CAP_MODEL_POLICY,
                "minichat_publish_usage",
                timeout=self.timeout * _PLUGIN_TIMEOUT_SHARE,
                event=event,
            )
        except PluginConfigError as exc:
            # No model-policy plugin (yet): keep the usage event and retry, billing must not lose it.
            raise TransientError(f"model_policy plugin not available: {exc}") from exc


_AUDIT_HOOKS: Final = {
    "turn": "minichat_emit_turn_audit",
    "delete": "minichat_emit_turn_delete_audit",
    "turn_retry": "minichat_emit_turn_retry_audit",
    "turn_edit": "minichat_emit_turn_edit_audit",
}


class AuditHandler:
    """audit queue → the audit hook for the envelope's type; dropped (counted) without an audit plugin."""

    def __init__(self, outbox: Outbox, plugin_host: PluginCaller, timeout: float) -> None:
        self.outbox = outbox
        self.plugin_host = plugin_host
        self.timeout = timeout

    async def __call__(self, delivery: Delivery) -> None:
        # Resolve first, as the original: without an audit plugin even an unreadable payload is dropped.
        if not self.plugin_host.has(constants.CAP_AUDIT):
            self.outbox.metrics.dropped.labels(delivery.queue).inc()
            logger.debug("audit message %d/%d dropped: no audit plugin", delivery.partition, delivery.seq)
            return
        envelope = delivery.decode(AuditEnvelope)
        try:
            event = envelope.unwrap()
        except msgspec.ValidationError as exc:
            raise PermanentError(f"audit {envelope.type} event does not fit its struct: {exc}") from None
        if isinstance(event, TurnMutationAuditEvent):
            hook = _AUDIT_HOOKS[event.event_type]
        elif isinstance(event, TurnDeleteAuditEvent):
            hook = _AUDIT_HOOKS["delete"]
        else:
            assert isinstance(event, TurnAuditEvent)
            hook = _AUDIT_HOOKS["turn"]
        try:
            await self.plugin_host.call(
                constants.CAP_AUDIT, hook, timeout=self.timeout * _PLUGIN_TIMEOUT_SHARE, event=event
            )
        except PluginConfigError as exc:
            raise TransientError(f"audit plugin not available: {exc}") from exc


def register_plugin_queues(outbox: Outbox, plugin_host: PluginCaller, config: Config) -> None:
    """Register the usage and audit queues on `outbox`, routed to the resolved plugins' hooks."""
    usage_timeout, usage_lease = queue_timing(config, constants.QUEUE_USAGE)
    outbox.register_queue(
        constants.QUEUE_USAGE,
        UsageHandler(plugin_host, usage_timeout),
        partitions=config.outbox.num_partitions,
        timeout=usage_timeout,
        lease_seconds=usage_lease,
    )
    audit_timeout, audit_lease = queue_timing(config, constants.QUEUE_AUDIT, AUDIT_TIMEOUT_SECONDS)
    outbox.register_queue(
        constants.QUEUE_AUDIT,
        AuditHandler(outbox, plugin_host, audit_timeout),
        partitions=config.outbox.num_partitions,
        timeout=audit_timeout,
        lease_seconds=audit_lease,
    )
