"""UUIDs as text, for the plugin hooks' arguments and the events' fields (canonical, dashed, lower case)."""

from __future__ import annotations

import uuid
from typing import Final

import msgspec

_to_builtins: Final = msgspec.to_builtins


def uuid_text(value: uuid.UUID) -> str:
    """`str(value)` in about a third of its time: `UUID.__str__` formats the number twice in Python, msgspec's
    encoder once in C. A turn turns ~20 ids into text (its policy reads, its usage and audit events)."""
    text: str = _to_builtins(value)
    return text
