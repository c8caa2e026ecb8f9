"""The `plugins.settings.audit_log` section."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

SECTION = "audit_log"
DEFAULT_FILENAME = "audit.jsonl"
DEFAULT_REDACT_KEYS = ("api_key", "authorization", "password", "secret", "token")


class AuditLogSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    vendor: str = "minichat"
    priority: int = 100
    path: str = ""  # "" = <data_dir>/audit.jsonl
    rotate_bytes: Annotated[int, msgspec.Meta(gt=0)] = 10 * 1024 * 1024
    keep_files: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    fsync: Literal["always", "never"] = "always"
    redact_keys: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_REDACT_KEYS))

    def __post_init__(self) -> None:
        if not self.vendor:
            raise ValueError("vendor must not be empty")
