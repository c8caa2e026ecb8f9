"""An incremental Server-Sent Events parser (WHATWG "event stream interpretation"): bytes in, events out.

Chunks may split the stream anywhere, including inside a multi-byte character or between the CR and LF
of a CRLF. Lines end with CRLF, LF or CR; `:` lines are comments; `data` lines accumulate (joined by
LF); a blank line dispatches; an event with no data is dropped; a final event with no blank line after it
is discarded at end of stream, as the spec says.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class SseEvent(NamedTuple):
    """One dispatched event (a named tuple: built once per streamed chunk, where a frozen dataclass's
    `__init__` cost more than the parsing)."""

    event: str
    data: str
    id: str | None = None


class SseParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False  # the last chunk ended in CR: an LF opening the next one belongs to it
        self._at_start = True
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Consume one chunk and return the events it completed, in order."""
        if (
            # The usual chunk of a model's stream is one whole event (`data: …`, or `event: …` then `data: …`)
            # in LF line ends, with nothing pending: taken without the line scan (a third of the relay's
            # parsing time per chunk).
            chunk.endswith(b"\n\n")
            and b"\r" not in chunk
            and not (self._buffer or self._skip_lf or self._at_start or self._data or self._event)
        ):
            end = len(chunk) - 2
            first = chunk.find(b"\n")
            if first == end and chunk.startswith(b"data: "):
                return [SseEvent("message", chunk[6:end].decode("utf-8", errors="replace"), self._last_id)]
            if (
                chunk.startswith(b"event: ")
                and chunk.startswith(b"data: ", first + 1)
                and chunk.find(b"\n", first + 1) == end
            ):
                name = chunk[7:first].decode("utf-8", errors="replace") or "message"
                return [
                    SseEvent(name, chunk[first + 7 : end].decode("utf-8", errors="replace"), self._last_id)
                ]
        if self._skip_lf and chunk:
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
            self._skip_lf = False
        buffer = self._buffer + chunk if self._buffer else chunk
        if self._at_start:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._buffer = buffer
                return []
            self._at_start = False
            if buffer.startswith(_BOM):
                buffer = buffer[len(_BOM) :]
        events: list[SseEvent] = []
        if b"\r" not in buffer:
            # LF line ends only (what the model APIs send): split at once instead of a search per line; this
            # is the path of chunks carrying several events (a busy loop reads them coalesced).
            lines = buffer.split(b"\n")
            self._buffer = lines.pop()
            for line in lines:
                event = self._line(line.decode("utf-8", errors="replace"))
                if event is not None:
                    events.append(event)
            return events
        pos = 0
        size = len(buffer)
        while pos < size:
            match = _EOL.search(buffer, pos)
            if match is None:
                break
            line = buffer[pos : match.start()]
            pos = match.end()
            if pos == size and match.group() == b"\r":
                self._skip_lf = True
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        self._buffer = buffer[pos:]
        return events

    @property
    def has_partial_event(self) -> bool:
        """True when bytes or fields are waiting for a line end / blank line (a truncated stream)."""
        return bool(self._buffer) or bool(self._data) or bool(self._event)

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        # `retry` and unknown fields carry nothing a client of these APIs needs.
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SseEvent(event=event or "message", data="\n".join(data), id=self._last_id)
