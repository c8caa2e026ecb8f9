"""Ids and timestamps as text, for the plugin hooks' arguments and the events' fields.

Both go through msgspec's encoder, in C: `UUID.__str__` formats the number twice in Python (~0.85 µs), and
`datetime.isoformat` builds its text through `PyUnicode_FromFormat` (~1.1 µs); a turn turns ~20 ids and a
few timestamps into text (its policy reads, its usage and audit events).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Final

import msgspec

_to_builtins: Final = msgspec.to_builtins


def uuid_text(value: uuid.UUID) -> str:
    """`str(value)` (canonical, dashed, lower case) in about a third of its time."""
    text: str = _to_builtins(value)
    return text


def rfc3339(moment: dt.datetime) -> str:
    """An aware datetime in UTC with a `Z`, microseconds only when it has them: what
    `moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")` gives, in a fifth of its time."""
    text: str = _to_builtins(moment.astimezone(dt.UTC))
    return text
