"""Errors a plugin raises to tell the host what to do with the work it was given."""

from __future__ import annotations


class PluginError(Exception):
    """Base of the errors a plugin may raise on purpose."""


class TransientError(PluginError):
    """Try again later (outbox: retry with backoff). Timeouts and unexpected exceptions count as this."""


class PermanentError(PluginError):
    """Never going to work (outbox: reject to dead letters with this message as the reason)."""


class PluginConfigError(Exception):
    """The plugin set-up cannot start: unknown vendor, bad plugin settings, a broken entry point."""


class PluginTimeout(TransientError):
    """A hook call did not finish within its timeout (the outbox retries it like any transient error)."""
