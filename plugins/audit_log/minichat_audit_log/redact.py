"""Redaction and truncation applied to every audit event before it is written.

Values under secret-looking keys are replaced, bearer tokens and `sk-...` keys are masked inside any
string, and every string is cut to 8 KiB (UTF-8 bytes) with a visible marker.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MAX_STRING_BYTES = 8 * 1024
REDACTED = "[REDACTED]"
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
_SECRET_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")


class Redactor:
    def __init__(self, redact_keys: Iterable[str], max_string_bytes: int = MAX_STRING_BYTES) -> None:
        self._keys = frozenset(_normalize(k) for k in redact_keys)
        self._max = max_string_bytes

    def is_secret_key(self, key: str) -> bool:
        """`token` matches `token` and `access_token`, not `input_tokens` (a count, not a secret)."""
        normalized = _normalize(key)
        return any(normalized == k or normalized.endswith("_" + k) for k in self._keys)

    def clean(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: REDACTED if item is not None and self.is_secret_key(str(key)) else self.clean(item)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.clean(item) for item in value]
        if isinstance(value, str):
            return self.truncate(self.redact_text(value))
        return value

    @staticmethod
    def redact_text(text: str) -> str:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        return _SECRET_KEY.sub(f"sk-{REDACTED}", text)

    def truncate(self, text: str) -> str:
        encoded = text.encode("utf-8")
        if len(encoded) <= self._max:
            return text
        marker = f"…[truncated, {len(encoded)} bytes]"
        keep = self._max - len(marker.encode("utf-8"))
        # errors="ignore" drops a multi-byte character split by the cut instead of producing U+FFFD.
        return encoded[:keep].decode("utf-8", errors="ignore") + marker


def _normalize(key: str) -> str:
    return key.strip().lower().replace("-", "_")
