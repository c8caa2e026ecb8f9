"""minichat audit to an append-only JSON-lines file: rotation, fsync policy, redaction, 8 KiB strings."""

from __future__ import annotations

from minichat_audit_log.plugin import AuditLogPlugin
from minichat_audit_log.redact import MAX_STRING_BYTES, Redactor
from minichat_audit_log.settings import SECTION, AuditLogSettings
from minichat_audit_log.writer import AuditLogWriter

__all__ = ["MAX_STRING_BYTES", "SECTION", "AuditLogPlugin", "AuditLogSettings", "AuditLogWriter", "Redactor"]
