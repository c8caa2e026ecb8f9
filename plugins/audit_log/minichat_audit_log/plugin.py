"""The `audit_log` plugin: every audit event becomes one line `{"type": ..., "event": {...}}`.

The hooks are sync (file writes and fsync), so the host runs them in worker threads; the writer's lock
keeps concurrent events from interleaving or racing a rotation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec

from minichat_audit_log.redact import Redactor
from minichat_audit_log.settings import DEFAULT_FILENAME, SECTION, AuditLogSettings
from minichat_audit_log.writer import AuditLogWriter
from minichat_host import hookimpl
from minichat_host.plugins.errors import PermanentError
from minichat_host.plugins.types import Capability, PluginSettings

EventType = Literal["turn", "mutation", "delete"]


class AuditLogPlugin:
    """Audit for vendor `minichat` (configurable) into an append-only JSON-lines file."""

    def __init__(self) -> None:
        self.settings = AuditLogSettings()
        self._writer: AuditLogWriter | None = None
        self._redactor = Redactor(self.settings.redact_keys)

    @hookimpl
    def minichat_plugin_settings(self) -> PluginSettings:
        return PluginSettings(section=SECTION, struct=AuditLogSettings)

    @hookimpl
    def minichat_configure(self, settings: AuditLogSettings, data_dir: Path) -> None:
        self.settings = settings
        path = Path(settings.path) if settings.path else Path(data_dir) / DEFAULT_FILENAME
        self._writer = AuditLogWriter(
            path,
            rotate_bytes=settings.rotate_bytes,
            keep_files=settings.keep_files,
            fsync=settings.fsync == "always",
        )
        self._redactor = Redactor(settings.redact_keys)

    @hookimpl
    def minichat_capabilities(self) -> list[Capability]:
        return [Capability(capability="audit", vendor=self.settings.vendor, priority=self.settings.priority)]

    @hookimpl
    def minichat_shutdown(self) -> None:
        if self._writer is not None:
            self._writer.close()

    @hookimpl
    def minichat_emit_turn_audit(self, event: Any) -> None:
        self._write("turn", event)

    @hookimpl
    def minichat_emit_turn_retry_audit(self, event: Any) -> None:
        self._write("mutation", event)

    @hookimpl
    def minichat_emit_turn_edit_audit(self, event: Any) -> None:
        self._write("mutation", event)

    @hookimpl
    def minichat_emit_turn_delete_audit(self, event: Any) -> None:
        self._write("delete", event)

    @property
    def writer(self) -> AuditLogWriter:
        if self._writer is None:
            raise PermanentError("audit_log is not configured (the host did not call minichat_configure)")
        return self._writer

    def _write(self, event_type: EventType, event: Any) -> None:
        body = event if isinstance(event, dict) else msgspec.to_builtins(event)
        if not isinstance(body, dict):
            raise PermanentError(f"audit event must be a struct or a mapping, got {type(event).__name__}")
        record = {"type": event_type, "event": self._redactor.clean(body)}
        self.writer.write_line(msgspec.json.encode(record) + b"\n")
