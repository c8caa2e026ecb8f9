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
_KEY_MEMO_MAX = 4096  # distinct keys remembered (an event's keys are mostly the same few dozen field names)


class Redactor:
    def __init__(self, redact_keys: Iterable[str], max_string_bytes: int = MAX_STRING_BYTES) -> None:
        self._keys = frozenset(_normalize(k) for k in redact_keys)
        self._max = max_string_bytes
        self._secret_keys: dict[str, bool] = {}

    def is_secret_key(self, key: str) -> bool:
        """`token` matches `token` and `access_token`, not `input_tokens` (a count, not a secret)."""
        known = self._secret_keys.get(key)
        if known is None:
            normalized = _normalize(key)
            known = any(normalized == k or normalized.endswith("_" + k) for k in self._keys)
            if len(self._secret_keys) >= _KEY_MEMO_MAX:
                self._secret_keys.clear()
            self._secret_keys[key] = known
        return known

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
        # Most strings contain neither pattern's literal part: two substring tests are ~20x cheaper than
        # the two case-insensitive scans (a 1.5 KB answer: 2 µs against 47 µs).
        if "sk-" not in text and "bearer" not in text.lower():
            return text
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
        return _SECRET_KEY.sub(f"sk-{REDACTED}", text)

    def truncate(self, text: str) -> str:
        if len(text) * 4 <= self._max:  # short enough whatever its characters (at most 4 UTF-8 bytes each)
            return text
        encoded = text.encode("utf-8")
        if len(encoded) <= self._max:
            return text
        marker = f"…[truncated, {len(encoded)} bytes]"
        keep = self._max - len(marker.encode("utf-8"))
        # errors="ignore" drops a multi-byte character split by the cut instead of producing U+FFFD.
        return encoded[:keep].decode("utf-8", errors="ignore") + marker


def _normalize(key: str) -> str:
    return key.strip().lower().replace("-", "_")
